"""The level orchestrator with a user's own recipe defined here: own network, loaders, optimizer,
Composer algorithm and logger, getting IMP in a few lines."""

import json
import os

import pytest
import torch
from composer.algorithms import LabelSmoothing
from composer.loggers import InMemoryLogger
from composer.models import ComposerClassifier
from composer.optim import MultiStepScheduler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from composer_imp import IMPConfig, find_ticket


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(6 * 64, 10)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture(scope='module')
def user_loaders():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    train = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=50, shuffle=True)
    test = DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=200)
    return train, test


def _recipe(user_loaders, memory_loggers):
    train, test = user_loaders

    def model_fn():
        torch.manual_seed(1)
        return ComposerClassifier(UserNet(), num_classes=10)

    def trainer_kwargs_fn(model, level):
        memory_loggers.append(InMemoryLogger())
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return dict(optimizers=opt, schedulers=MultiStepScheduler(['40ba'], gamma=0.1), train_dataloader=train,
                    eval_dataloader=test, max_duration='2ep', algorithms=[LabelSmoothing(0.05)],
                    loggers=[memory_loggers[-1]], progress_bar=False, device='cpu', seed=5)
    return model_fn, trainer_kwargs_fn


def test_user_recipe_gets_imp_with_all_outputs(tmp_path, user_loaders):
    loggers = []
    model_fn, trainer_kwargs_fn = _recipe(user_loaders, loggers)
    rows = find_ticket(model_fn, trainer_kwargs_fn, str(tmp_path), IMPConfig(levels=3, ratio=0.2, rewind='5ba'))

    assert [r['level'] for r in rows] == [0, 1, 2, 3]
    summary = json.loads((tmp_path / 'summary.json').read_text())['levels']
    assert summary == rows
    total = rows[0]['prunable']
    for r in rows:
        assert r['remaining'] == pytest.approx(total * 0.8 ** r['level'], abs=3)
        assert 0 <= r['accuracy'] <= 1 and r['loss'] > 0
        assert r['wall_seconds'] >= r['fit_seconds'] > 0
    assert rows[0]['steps'] == 56 and all(r['steps'] == 51 for r in rows[1:])
    assert rows[-1]['cumulative_steps'] == 56 + 3 * 51
    assert [r['ratio'] for r in rows] == [0.0, 0.2, 0.2, 0.2]
    assert rows[0]['accuracy'] > 0.5, 'the dense net should learn digits'

    masks = [torch.load(tmp_path / f'level_{l:02d}' / 'mask.pt', weights_only=True) for l in range(4)]
    assert set(masks[0]) == {'module.body.0.weight', 'module.head.weight'}
    assert all(m.all() for m in masks[0].values())
    for prev, cur in zip(masks, masks[1:]):
        assert all(not (cur[k] & ~prev[k]).any() for k in cur), 'masks must be nested'
    for level, mask in enumerate(masks):
        weights = torch.load(tmp_path / f'level_{level:02d}' / 'weights.pt', weights_only=True)
        assert set(mask) <= set(weights) and 'module.body.1.running_mean' in weights
        for k, m in mask.items():
            assert torch.all(weights[k][~m] == 0)
    assert os.path.isfile(tmp_path / 'rewind' / 'rewind.pt')
    assert os.path.isfile(tmp_path / 'config.yaml')
    png = tmp_path / 'accuracy_vs_compute.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000

    # Per-level metrics reached the run's own Composer loggers.
    assert len(loggers) == 4
    for level, logger in enumerate(loggers):
        assert logger.most_recent_values['imp/level'] == level
        assert logger.most_recent_values['imp/weights_remaining'] == pytest.approx(rows[level]['weights_remaining'])
        assert logger.most_recent_values['imp/accuracy'] == pytest.approx(rows[level]['accuracy'])

    # Re-running the same command finishes at once: done levels are kept, not retrained.
    again = find_ticket(model_fn, trainer_kwargs_fn, str(tmp_path), IMPConfig(levels=3, ratio=0.2, rewind='5ba'))
    assert again == rows and len(loggers) == 4

    # More levels extend the run: only level 4 trains.
    more = find_ticket(model_fn, trainer_kwargs_fn, str(tmp_path), IMPConfig(levels=4, ratio=0.2, rewind='5ba'))
    assert more[:4] == rows and more[4]['level'] == 4 and len(loggers) == 5

    # A different config on the same folder is refused, naming the changed key; nothing is touched.
    before = (tmp_path / 'summary.json').read_bytes()
    with pytest.raises(ValueError, match=r'imp.ratio \(0.2 -> 0.5\)'):
        find_ticket(model_fn, trainer_kwargs_fn, str(tmp_path), IMPConfig(levels=4, ratio=0.5, rewind='5ba'))
    assert (tmp_path / 'summary.json').read_bytes() == before

    # A folder from an older composer-imp (no imp.adaptive.land_on_target, the old 'eval' baseline default) still
    # resumes: settings it lacks take their defaults, and imp.adaptive.* cannot matter while adaptive is off.
    from omegaconf import OmegaConf
    old = OmegaConf.load(tmp_path / 'config.yaml')
    del old.imp.adaptive['land_on_target']
    old.imp.adaptive.baseline = 'eval'
    OmegaConf.save(old, tmp_path / 'config.yaml')
    assert find_ticket(model_fn, trainer_kwargs_fn, str(tmp_path), IMPConfig(levels=4, ratio=0.2, rewind='5ba')) == more
    adaptive = IMPConfig(levels=4, ratio=0.2, rewind='5ba', adaptive={'enabled': True})
    with pytest.raises(ValueError, match=r"imp.adaptive.baseline \('eval' -> 'train'\)"):  # with adaptive on, it does
        find_ticket(model_fn, trainer_kwargs_fn, str(tmp_path), adaptive)

    # The landscape analysis of a Python-API run, with the user's own model and loaders.
    from types import SimpleNamespace
    from composer_imp.analyze import analyze_run
    mine = SimpleNamespace(model_fn=model_fn, trainer_kwargs_fn=trainer_kwargs_fn, eval_dataloader=user_loaders[1])
    analysis = analyze_run(str(tmp_path), betas=[0.0, 0.5, 1.0], pairwise=False, recipe=mine)
    assert [r['level'] for r in analysis['levels']] == [0, 1, 2, 3, 4] and len(analysis['successive']) == 4
    for r, row in zip(analysis['levels'], more):  # the same test error the Trainer measured
        assert r['error'] == pytest.approx(1 - row['accuracy'], abs=1e-6)
    recal = analyze_run(str(tmp_path), betas=[0.0, 0.5, 1.0], recalibrate_bn=True, pairwise=False, recipe=mine,
                        overwrite=True)  # BatchNorm statistics from the training loader's dataset
    assert recal['recalibrate_bn'] and recal['levels'][0]['loss'] != analysis['levels'][0]['loss']


def test_reserved_trainer_kwargs_are_refused(tmp_path, user_loaders):
    model_fn, kwargs_fn = _recipe(user_loaders, [])
    with pytest.raises(ValueError, match="'load_path'"):
        find_ticket(model_fn, lambda m, l: dict(kwargs_fn(m, l), load_path='x.pt'), str(tmp_path), IMPConfig(levels=1))


def test_rewind_after_end_is_refused_before_training(tmp_path, user_loaders):
    model_fn, kwargs_fn = _recipe(user_loaders, [])
    with pytest.raises(ValueError, match='imp.rewind'):
        find_ticket(model_fn, kwargs_fn, str(tmp_path), IMPConfig(levels=1, rewind='3ep'))
    assert not os.listdir(tmp_path), 'a refused run must write nothing'


def test_controls_random_mask_and_reinit_beside_the_ticket(tmp_path, user_loaders):
    from composer_imp.controls import random_mask_like
    loggers = []
    model_fn, kwargs_fn = _recipe(user_loaders, loggers)
    imp = IMPConfig(levels=2, ratio=0.5, rewind='5ba', controls=['random_mask', 'reinit'], control_levels=[2])
    rows = find_ticket(model_fn, kwargs_fn, str(tmp_path), imp)
    summary = json.loads((tmp_path / 'summary.json').read_text())
    for kind in ('random_mask', 'reinit'):
        result = json.loads((tmp_path / 'level_02' / 'controls' / f'{kind}.json').read_text())
        assert result['weights_remaining'] == pytest.approx(rows[2]['weights_remaining'])
        assert 0 <= result['accuracy'] <= 1
        assert summary['controls']['2'][kind] == result['accuracy']
    ticket = torch.load(tmp_path / 'level_02' / 'mask.pt', weights_only=True)
    rand = random_mask_like(ticket, 0)
    assert all(int(rand[k].sum()) == int(ticket[k].sum()) for k in ticket)  # same per-layer sparsity
    assert any(not torch.equal(rand[k], ticket[k]) for k in ticket)          # different positions
    n = len(loggers)
    find_ticket(model_fn, kwargs_fn, str(tmp_path), imp)  # resumable: nothing is trained again
    assert len(loggers) == n
    with pytest.raises(ValueError, match='imp.controls has unknown kinds'):
        IMPConfig(controls=['shuffle']).validate()


def test_reinit_control_permutes_weights_within_each_layer(user_loaders):
    from composer import Trainer
    from composer_imp.controls import PermuteWeights
    train, _ = user_loaders
    model_fn, _ = _recipe(user_loaders, [])
    model = model_fn()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = ['module.body.0.weight', 'module.head.weight']
    trainer = Trainer(model=model, optimizers=torch.optim.SGD(model.parameters(), lr=0.0), train_dataloader=train,
                      max_duration='1ba', callbacks=[PermuteWeights(names, seed=3)], progress_bar=False, device='cpu')
    trainer.fit()
    trainer.close()
    after = dict(model.named_parameters())
    for n in names:
        assert torch.equal(after[n].detach().flatten().sort().values, before[n].flatten().sort().values)
        assert not torch.equal(after[n].detach(), before[n])
    assert torch.equal(after['module.head.bias'].detach(), before['module.head.bias'])
