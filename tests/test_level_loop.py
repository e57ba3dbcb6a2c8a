"""The level loop (find_ticket) around a user's own recipe: own network, loaders, optimizer, Composer algorithm
and logger in a ``make_trainer(level, seed, imp_args)``, getting IMP in a few lines; what it refuses; controls."""

import json
import logging
import os

import pytest
import torch
from composer import Callback, Trainer
from composer.algorithms import LabelSmoothing
from composer.loggers import InMemoryLogger
from composer.models import ComposerClassifier
from composer.optim import MultiStepScheduler
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from composer_imp import IMP, AdaptiveIMP, find_ticket
from composer_imp.masks import apply_mask_to_model
from conftest import TrainingRecord


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


def _user_recipe(user_loaders, imp=lambda: IMP(ratio=0.2, rewind='5ba')):
    """What a user writes: build everything for one level and hand IMP its arguments."""
    train, test = user_loaders
    loggers, records = [], []  # (level, InMemoryLogger) per Trainer built; TrainingRecord per Trainer built

    def make_trainer(level, seed, imp_args):
        model = ComposerClassifier(UserNet(), num_classes=10)
        logger = InMemoryLogger()
        loggers.append((level, logger))
        records.append(TrainingRecord(level, seed, imp_args))
        return Trainer(model=model, optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                       schedulers=MultiStepScheduler(['40ba'], gamma=0.1), train_dataloader=train,
                       eval_dataloader=test, max_duration='2ep', algorithms=[LabelSmoothing(0.05), imp()],
                       loggers=[logger], callbacks=[records[-1]], progress_bar=False, device='cpu', seed=seed,
                       **imp_args)

    make_trainer.loggers, make_trainer.records = loggers, records
    return make_trainer


def _fitted(make_trainer):
    return [r.level for r in make_trainer.records if r.end is not None]


def test_user_recipe_gets_imp_with_all_outputs(tmp_path, user_loaders, caplog):
    caplog.set_level(logging.INFO, logger='composer_imp')
    make_trainer = _user_recipe(user_loaders)
    rows = find_ticket(make_trainer, str(tmp_path), levels=3, seed=5)

    assert [r['level'] for r in rows] == [0, 1, 2, 3]
    assert _fitted(make_trainer) == [0, 0, 1, 2, 3]  # the pretraining to τ, then level 0 from w_τ
    assert all(r.seed == 5 for r in make_trainer.records)
    summary = json.loads((tmp_path / 'summary.json').read_text())['levels']
    assert summary == rows
    total = rows[0]['prunable']
    for r in rows:
        assert r['remaining'] == pytest.approx(total * 0.8 ** r['level'], abs=3)
        assert 0 <= r['accuracy'] <= 1 and r['loss'] > 0
        assert r['accuracy'] == r['eval']['MulticlassAccuracy'] and r['loss'] == r['eval']['CrossEntropy']
        assert r['wall_seconds'] >= r['fit_seconds'] > 0
        assert json.loads((tmp_path / f"level_{r['level']:02d}" / 'level.json').read_text()) == r
    assert rows[0]['steps'] == 56 and all(r['steps'] == 51 for r in rows[1:])
    assert all(r['start_step'] == 5 for r in rows) and rows[0]['pretraining_steps'] == 5
    assert rows[-1]['cumulative_steps'] == 56 + 3 * 51
    assert [r['ratio'] for r in rows] == [0.0, 0.2, 0.2, 0.2]
    assert rows[0]['accuracy'] > 0.5, 'the dense net should learn digits'
    assert rows[0]['epsilon'] > 0 and rows[0]['epsilon_batches'] == 28  # the last epoch's 28 batch losses

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
        assert json.loads((tmp_path / f'level_{level:02d}' / 'selection.json').read_text())['ratio'] == rows[level]['ratio']
    # Every level was built with imp_args that load the rewind point; the pretraining with none.
    assert [r.imp_args.get('load_path') for r in make_trainer.records] == [None] + 4 * [str(tmp_path / 'rewind' / 'rewind.pt')]
    assert os.path.isfile(tmp_path / 'rewind' / 'rewind.pt')
    config = OmegaConf.load(tmp_path / 'config.yaml')
    assert OmegaConf.to_container(config.algorithms) == {'IMP': {'ratio': 0.2, 'rewind': '5ba', 'ignore': [],
                                                                 'scope': 'global', 'rewind_optimizer': False,
                                                                 'data_order': 'new'}}
    assert config.levels == 3 and config.seed == 5 and config.target_sparsity is None
    png = tmp_path / 'accuracy_vs_compute.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000

    # Per-level metrics reached the run's own Composer loggers.
    logged = [(level, lg) for level, lg in make_trainer.loggers if 'imp/level' in lg.most_recent_values]
    assert [level for level, _ in logged] == [0, 1, 2, 3]
    for level, logger in logged:
        assert logger.most_recent_values['imp/level'] == level
        assert logger.most_recent_values['imp/weights_remaining'] == pytest.approx(rows[level]['weights_remaining'])
        assert logger.most_recent_values['imp/accuracy'] == pytest.approx(rows[level]['accuracy'])
        assert logger.most_recent_values['imp/loss'] == pytest.approx(rows[level]['loss'])

    # Progress lines are logging records of the 'composer_imp' logger.
    lines = [r.getMessage() for r in caplog.records if r.name.startswith('composer_imp')]
    for level in range(4):
        assert any(line.startswith(f'level {level:02d}/03: ') for line in lines), lines
    assert any(line.startswith('sparsest level within 1 point of dense accuracy') or
               line.startswith('no pruned level came within 1 point') for line in lines)

    # Re-running the same command finishes at once: done levels are kept, not retrained.
    caplog.clear()
    again = find_ticket(make_trainer, str(tmp_path), levels=3, seed=5)
    assert again == rows and _fitted(make_trainer) == [0, 0, 1, 2, 3]
    assert sum('already done' in r.getMessage() for r in caplog.records) == 4

    # More levels extend the run: only level 4 trains.
    more = find_ticket(make_trainer, str(tmp_path), levels=4, seed=5)
    assert more[:4] == rows and more[4]['level'] == 4 and _fitted(make_trainer) == [0, 0, 1, 2, 3, 4]
    assert more[4]['remaining'] == pytest.approx(total * 0.8 ** 4, abs=3)

    # A different IMP on the same folder is refused, naming the changed key; nothing is touched or trained.
    before = (tmp_path / 'summary.json').read_bytes()
    with pytest.raises(ValueError, match=r'changed keys: algorithms.IMP.ratio \(0.2 -> 0.5\)'):
        find_ticket(_user_recipe(user_loaders, lambda: IMP(ratio=0.5, rewind='5ba')), str(tmp_path), levels=4, seed=5)
    with pytest.raises(ValueError, match=r"was made with IMP, and this run uses AdaptiveIMP"):
        find_ticket(_user_recipe(user_loaders, lambda: AdaptiveIMP(ratio=0.2, rewind='5ba', subsample=100, epsilon='eval')),
                    str(tmp_path), levels=4, seed=5)
    with pytest.raises(ValueError, match=r'seed \(5 -> 6\)'):
        find_ticket(make_trainer, str(tmp_path), levels=4, seed=6)
    # A run made before the rewinding options restored the optimizer and replayed the data order: not mixed.
    current = (tmp_path / 'config.yaml').read_text()
    legacy = OmegaConf.load(tmp_path / 'config.yaml')
    del legacy.algorithms.IMP['rewind_optimizer'], legacy.algorithms.IMP['data_order']
    OmegaConf.save(legacy, tmp_path / 'config.yaml')
    for changed in (r"IMP.data_order \('replay' -> 'new'\)", r'IMP.rewind_optimizer \(True -> False\)'):
        with pytest.raises(ValueError, match=changed):
            find_ticket(make_trainer, str(tmp_path), levels=4, seed=5)
    (tmp_path / 'config.yaml').write_text(current)
    assert (tmp_path / 'summary.json').read_bytes() == before and _fitted(make_trainer) == [0, 0, 1, 2, 3, 4]

    # A folder made before IMP became a Composer component (an imp: block with levels) is refused for resume
    # with the reason; its levels are still analysed below.
    new_config = (tmp_path / 'config.yaml').read_text()
    old = {'save_folder': str(tmp_path), 'seed': 5,
           'imp': {'levels': 4, 'ratio': 0.2, 'rewind': '5ba', 'ignore': [], 'scope': 'global', 'adaptive': {}}}
    OmegaConf.save(OmegaConf.create(old), tmp_path / 'config.yaml')
    with pytest.raises(ValueError, match='before IMP/AdaptiveIMP became Composer components'):
        find_ticket(make_trainer, str(tmp_path), levels=4, seed=5)
    assert (tmp_path / 'summary.json').read_bytes() == before and _fitted(make_trainer) == [0, 0, 1, 2, 3, 4]

    # The landscape analysis of a Python-API run, with the user's own model (as its Trainer holds it) and loaders.
    from composer_imp.analysis import LandscapeSettings, analyze_run
    from composer_imp.masks import unwrap_model
    train, test = user_loaders
    trainer = make_trainer(0, 5, {})
    model = unwrap_model(trainer.state.model)
    trainer.close()

    def analysed():
        analysis = analyze_run(str(tmp_path), model, test, settings=LandscapeSettings(betas=[0.0, 0.5, 1.0], pairwise=False),
                               overwrite=True)
        assert [r['level'] for r in analysis['levels']] == [0, 1, 2, 3, 4] and len(analysis['successive']) == 4
        for r, row in zip(analysis['levels'], more):  # the same test error the Trainer measured
            assert r['error'] == pytest.approx(1 - row['accuracy'], abs=1e-6)
        return analysis

    analysed()  # the folder with the old config.yaml
    (tmp_path / 'config.yaml').write_text(new_config)
    analysis = analysed()
    recal = analyze_run(str(tmp_path), model, test, train_data=train.dataset, overwrite=True,  # BN statistics from
                        settings=LandscapeSettings(betas=[0.0, 0.5, 1.0], recalibrate_bn=True, pairwise=False))  # train
    assert recal['recalibrate_bn'] and recal['levels'][0]['loss'] != analysis['levels'][0]['loss']


# ---- bad input: refused before level 0 trains, with a message naming the problem -------------------------

def _refused(tmp_path, make_trainer, match, exception=ValueError, **kwargs):
    folder = tmp_path / 'run'
    with pytest.raises(exception, match=match):
        find_ticket(make_trainer, str(folder), levels=1, **kwargs)
    assert not folder.exists() or not list(folder.iterdir()), 'a refused run must write nothing'
    assert all(r.start is None for r in getattr(make_trainer, 'records', [])), 'nothing may train'


def test_make_trainer_must_return_a_trainer(tmp_path, make_trainer_factory):
    from conftest import TinyNet
    built = []

    def returns_model(level, seed, imp_args):  # forgot the Trainer: returns the model it would train
        built.append(level)
        return ComposerClassifier(TinyNet(), num_classes=10)

    _refused(tmp_path, returns_model, r'must return a composer.Trainer; it returned ComposerClassifier. End it with '
                                      r'`return Trainer\(..., \*\*imp_args\)`', TypeError)
    assert built == [0]


@pytest.mark.parametrize('components, found', [
    (lambda: [], r"has 0 IMP components \[\]"),
    (lambda: [IMP(), IMP(ratio=0.5)], r"has 2 IMP components \['IMP', 'IMP'\]"),
    (lambda: [IMP(), AdaptiveIMP()], r"has 2 IMP components \['IMP', 'AdaptiveIMP'\]"),
])
def test_exactly_one_imp_component(components, found, tmp_path, make_trainer_factory):
    _refused(tmp_path, make_trainer_factory(imp=components), found + r'; put exactly one IMP\(...\) or AdaptiveIMP')


def test_checkpoints_outside_the_level_folder_are_refused(tmp_path, make_trainer_factory):
    elsewhere = tmp_path / 'elsewhere'
    make_trainer = make_trainer_factory(extra=lambda level: dict(save_folder=str(elsewhere), save_interval='1ep'))
    _refused(tmp_path, make_trainer, r"Level 0: the Trainer would write checkpoints to '.*elsewhere', outside the "
                                     r'level folder. Drop save_folder')
    assert not elsewhere.exists() or not list(elsewhere.iterdir())


def test_a_trainer_that_does_not_load_the_rewind_point_is_refused(tmp_path, make_trainer_factory):
    recipe = make_trainer_factory()

    def ignores_imp_args(level, seed, imp_args):  # passes imp_args at level 0 only
        return recipe(level, seed, imp_args if level == 0 else {})

    rewind = tmp_path / 'rewind' / 'rewind.pt'
    with pytest.raises(ValueError, match=r'Level 1: the Trainer make_trainer returned was not given imp_args .*Pass '
                                         r'\*\*imp_args to Trainer'):
        find_ticket(ignores_imp_args, str(tmp_path), levels=2)
    assert [r.level for r in recipe.records if r.end is not None] == [0, 0], 'level 1 must not train'
    assert [r.level for r in recipe.records] == [0, 0, 1]
    # Level 0's artifacts stay, and level 0 resumes as done once the recipe is fixed.
    from composer_imp.run_folder import RunFolder
    folder = RunFolder(str(tmp_path))
    assert folder.verify(0) and rewind.is_file() and not (tmp_path / 'level_01').exists()
    assert [r['level'] for r in folder.read_summary()] == [0]
    rows = find_ticket(recipe, str(tmp_path), levels=1)
    assert [r['level'] for r in rows] == [0, 1]
    assert [r.level for r in recipe.records if r.end is not None] == [0, 0, 1]


def test_rewind_after_end_is_refused_before_training(tmp_path, make_trainer_factory):
    make_trainer = make_trainer_factory(imp=lambda: IMP(rewind='3ep'), max_duration='2ep')
    _refused(tmp_path, make_trainer, r"IMP rewind='3ep' \(66 batches\) is not before max_duration=2ep \(44 batches\)")


def test_metric_names_what_the_row_records(tmp_path, make_trainer_factory):
    from composer.metrics import CrossEntropy
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy
    from conftest import TinyNet

    def model():
        metrics = {'Top1': MulticlassAccuracy(10), 'Top3': MulticlassAccuracy(10, top_k=3), 'CE': CrossEntropy()}
        return ComposerClassifier(TinyNet(), num_classes=10, val_metrics=MetricCollection(metrics))

    make_trainer = make_trainer_factory(model=model, max_duration='1ep')
    with pytest.raises(ValueError, match=r"metric='Accuracy' is not an eval metric of this Trainer; it has "
                                         r"\['CE', 'Top1', 'Top3'\]"):
        find_ticket(make_trainer, str(tmp_path / 'unknown'), levels=0, metric='Accuracy')
    with pytest.raises(ValueError, match=r"loss_metric='CrossEntropy' is not an eval metric of this Trainer; it "
                                         r"has \['CE', 'Top1', 'Top3'\]"):
        find_ticket(make_trainer, str(tmp_path / 'unknown_loss'), levels=0, metric='Top1', loss_metric='CrossEntropy')
    assert not (tmp_path / 'unknown').exists() and not (tmp_path / 'unknown_loss').exists()  # refused before training

    default, = find_ticket(make_trainer, str(tmp_path / 'default'), levels=0)
    named, = find_ticket(make_trainer, str(tmp_path / 'named'), levels=0, metric='Top3', loss_metric='CE')
    assert default['accuracy'] == default['eval']['Top1'] and default['loss'] == default['eval']['CE']
    assert named['accuracy'] == named['eval']['Top3'] and named['loss'] == named['eval']['CE']
    assert named['eval']['Top3'] > named['eval']['Top1'], 'top-3 accuracy of a 1-epoch net beats top-1'
    assert json.loads((tmp_path / 'named' / 'summary.json').read_text())['levels'][0]['accuracy'] == named['eval']['Top3']


# ---- controls ---------------------------------------------------------------------------------------------

def test_controls_random_mask_reinit_and_shuffle_beside_the_ticket(tmp_path, make_trainer_factory, caplog):
    from composer_imp.controls import run_control, run_controls
    caplog.set_level(logging.INFO, logger='composer_imp')
    make_trainer = make_trainer_factory(imp=lambda: IMP(ratio=0.5, rewind='5ba'))
    rows = find_ticket(make_trainer, str(tmp_path), levels=2, seed=3)
    ticket = torch.load(tmp_path / 'level_02' / 'mask.pt', weights_only=True)
    kept = {k: int(m.sum()) for k, m in ticket.items()}
    level0, level2 = (next(r for r in make_trainer.records if r.level == l and r.end is not None) for l in (0, 2))
    w_tau_masked = level2.start  # the ticket started from m ⊙ w_τ
    n_records = len(make_trainer.records)

    kinds = ['random_mask', 'reinit', 'shuffle']
    results = run_controls(make_trainer, str(tmp_path), levels=[2], kinds=kinds)
    assert [(r['level'], r['kind']) for r in results] == [(2, k) for k in kinds]
    trained = [r for r in make_trainer.records[n_records:] if r.end is not None]
    assert [r.level for r in trained] == [2, 2, 2] and all(r.seed == 3 for r in trained)
    starts = dict(zip(kinds, (r.start for r in trained)))
    ends = dict(zip(kinds, (r.end for r in trained)))
    for row in results:
        kind = row['kind']
        assert row['nonzero'] == row['mask_kept'], f'{kind}: trained with another number of weights than its mask'
        assert row['weights_remaining'] == pytest.approx(rows[2]['weights_remaining'])
        assert 0 <= row['accuracy'] <= 1 and row['dense_accuracy'] == rows[0]['accuracy']
        assert json.loads((tmp_path / 'level_02' / 'controls' / f'{kind}.json').read_text()) == row
        for name, m in ticket.items():  # exactly the recorded number of non-zeros, in every layer
            assert int((ends[kind][name] != 0).sum()) == row['nonzero'][name]

    # random_mask: the ticket's per-layer counts at other positions, on w_τ.
    assert results[0]['mask_kept'] == kept
    rand = {k: starts['random_mask'][k] != 0 for k in ticket}
    assert {k: int(m.sum()) for k, m in rand.items()} == kept
    assert all(not torch.equal(rand[k], ticket[k]) for k in ticket), 'the random mask must move the kept weights'
    w_tau = torch.load(tmp_path / 'rewind' / 'rewind.pt', weights_only=False)['state']['model']
    for k in ticket:
        assert torch.equal(starts['random_mask'][k][rand[k]], w_tau[k][rand[k]]), 'random_mask trains w_τ'
    # reinit: the ticket's mask on a fresh initialization: neither w_τ nor the run's own w_0.
    assert results[1]['mask_kept'] == kept
    for k, m in ticket.items():
        start = starts['reinit'][k]
        assert torch.all(start[~m] == 0) and torch.all(start[m] != 0)
        assert not torch.allclose(start[m], w_tau_masked[k][m]), f'{k}: reinit started from w_τ'
        assert not torch.allclose(start[m], level0.start[k][m]), f"{k}: reinit started from the run's own w_0"
    # shuffle: the ticket's mask and per-layer kept values of w_τ, at permuted positions.
    assert results[2]['mask_kept'] == kept
    for k, m in ticket.items():
        start = starts['shuffle'][k]
        assert torch.all(start[~m] == 0)
        assert torch.equal(start[m].sort().values, w_tau_masked[k][m].sort().values)
        assert not torch.equal(start[m], w_tau_masked[k][m])
    assert sum(r.getMessage().startswith('control ') for r in caplog.records) == 3

    # Resumable: a re-run reads the results back, building and training nothing.
    n_records = len(make_trainer.records)
    assert run_controls(make_trainer, str(tmp_path), levels=[2], kinds=kinds) == results
    assert len(make_trainer.records) == n_records
    with pytest.raises(ValueError, match=r"Unknown controls \['bogus'\]; valid: \['random_mask', 'reinit', 'shuffle'\]"):
        run_controls(make_trainer, str(tmp_path), levels=[2], kinds=['bogus'])
    with pytest.raises(ValueError, match='Controls branch from a finished pruned level'):
        run_control(make_trainer, str(tmp_path), 0, 'reinit')
    assert len(make_trainer.records) == n_records


def test_shuffle_permutes_kept_weights_within_each_layer(tiny_model_fn):
    from composer_imp import full_mask, magnitude_prune
    from composer_imp.controls import shuffle_kept_weights
    model = tiny_model_fn()
    mask = magnitude_prune(model, full_mask(model), 0.5)
    with torch.no_grad():
        apply_mask_to_model(model, mask)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    shuffle_kept_weights(model, mask, seed=3)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, m in mask.items():
        assert torch.equal(after[name][m].sort().values, before[name][m].sort().values)
        assert not torch.equal(after[name][m], before[name][m])
        assert torch.all(after[name][~m] == 0)
    for name in set(before) - set(mask):
        assert torch.equal(after[name], before[name])
    again = tiny_model_fn()
    again.load_state_dict({**again.state_dict(), **{n: before[n] for n in before}})
    shuffle_kept_weights(again, mask, seed=3)
    assert all(torch.equal(p, after[n]) for n, p in again.named_parameters()), 'same seed, same permutation'


# ---- review fixes: resume at a level's end, tau = 0 branches, replicate data orders ----------------------------

class _FirstBatch(Callback):
    """Records, per fit, the optimizer state size and the first labels at its first batch; can fail once at FIT_END."""

    def __init__(self):
        self.seen, self.fail, self.pending = [], None, False

    def fit_start(self, state, logger):
        self.pending = True

    def batch_start(self, state, logger):
        if self.pending:
            self.seen.append({'optimizer_state': sum(len(o.state) for o in state.optimizers),
                              'labels': state.batch[1][:16].tolist()})
            self.pending = False

    def fit_end(self, state, logger):
        if self.fail == 'now':
            self.fail = None
            raise RuntimeError("simulated crash after the level's last checkpoint")


def test_a_level_killed_after_its_last_checkpoint_resumes(tmp_path, make_trainer_factory):
    probe = _FirstBatch()
    make_trainer = make_trainer_factory(imp=lambda: IMP(ratio=0.5, rewind='5ba'), max_duration='30ba',
                                        extra=lambda level: {'callbacks': [probe], 'eval_interval': '30ba'})
    find_ticket(make_trainer, str(tmp_path), levels=0, checkpoint_interval='10ba')
    probe.fail = 'now'  # level 1 saves its final checkpoint (step 30), then dies before its files are written
    with pytest.raises(RuntimeError, match='simulated crash'):
        find_ticket(make_trainer, str(tmp_path), levels=1, checkpoint_interval='10ba')
    assert not (tmp_path / 'level_01' / 'level.json').exists()
    assert any((tmp_path / 'level_01' / 'checkpoints').iterdir())
    rows = find_ticket(make_trainer, str(tmp_path), levels=1, checkpoint_interval='10ba')
    assert rows[1]['resumed_from_step'] == 30 and rows[1]['steps'] == 25  # not trained again: evaluated
    assert rows[1]['accuracy'] is not None and rows[1]['accuracy'] > 0.3
    assert not (tmp_path / 'level_01' / 'checkpoints').exists()


def test_controls_at_tau_zero_start_without_optimizer_state_and_follow_the_replicate_order(tmp_path,
                                                                                         make_trainer_factory):
    from composer_imp.controls import run_control
    probe = _FirstBatch()
    make_trainer = make_trainer_factory(
        imp=lambda: IMP(ratio=0.5, rewind='0ba'), max_duration='10ba',
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
        extra=lambda level: {'callbacks': [probe]})
    find_ticket(make_trainer, str(tmp_path), levels=1, replicates=2)
    ticket = probe.seen[-1]  # replicate_01's level 1
    run_control(make_trainer, str(tmp_path / 'replicate_01'), 1, 'random_mask')
    control = probe.seen[-1]
    # At τ = 0 every branch starts like the levels: no optimizer state (the rewind checkpoint's momentum is an
    # artifact of saving at step 0), and a replicate's control draws that replicate's data order, not replicate 0's.
    assert ticket['optimizer_state'] == control['optimizer_state'] == 0
    assert control['labels'] == ticket['labels']
    first_replicate = probe.seen[1]  # replicate_00's level 1
    assert control['labels'] != first_replicate['labels']
