"""AdaptiveIMP: ε from the dense run's loss noise, the ratio sweep, max(p, floor), and bad input."""

import json
from types import SimpleNamespace

import pytest
import torch

from composer_imp import IMPConfig, find_ticket, full_mask
from composer_imp.adaptive import AdaptiveConfig, LossStatistics, sweep_ratio
from composer_imp.evaluate import evaluate_losses, fixed_subsample, interpolate
from composer_imp.masks import magnitude_prune, sparsity_report


def test_epsilon_is_std_of_last_full_epoch_losses():
    stats = LossStatistics()
    epochs = [[5.0, 4.0, 3.0], [1.0, 2.0, 3.0, 4.0]]
    for losses in epochs:
        stats.epoch_start(None, None)
        for v in losses:
            stats.batch_end(SimpleNamespace(total_loss_dict={'loss/train/total': v}), None)
        stats.epoch_end(None, None)
    stats.epoch_start(None, None)           # a partial last epoch (max_duration mid-epoch) does not count
    stats.batch_end(SimpleNamespace(total_loss_dict={'loss/train/total': 100.0}), None)
    result = stats.result()
    assert result['train_loss_mean'] == pytest.approx(2.5)
    assert result['epsilon'] == pytest.approx(torch.tensor([1.0, 2.0, 3.0, 4.0]).std().item())
    assert result['epsilon_batches'] == 4


@pytest.fixture(scope='module')
def trained(digits_loaders):
    from composer import Trainer
    from composer.models import ComposerClassifier
    from conftest import TinyNet
    torch.manual_seed(0)
    model = ComposerClassifier(TinyNet(), num_classes=10)
    trainer = Trainer(model=model, optimizers=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      train_dataloader=digits_loaders[0], max_duration='3ep', progress_bar=False, device='cpu', seed=0)
    trainer.fit()
    trainer.close()
    batches = fixed_subsample(digits_loaders[0].dataset, 300, 100)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}, batches


def _brute_force(model, weights, mask, batches, ratios, betas, recalibrate_bn):
    paths = {}
    for r in ratios:
        m = magnitude_prune(weights, mask, r)
        proj = {k: (v * m[k] if k in m else v) for k, v in weights.items()}
        paths[r] = evaluate_losses(model, interpolate(weights, proj, betas), batches, recalibrate_bn)
    return paths


@pytest.mark.parametrize('recalibrate_bn, floor', [(True, 0.0), (False, 0.0), (True, 0.3)])
def test_sweep_matches_exhaustive_search_with_fewer_passes(trained, recalibrate_bn, floor):
    model, weights, batches = trained
    mask = full_mask(model)
    cfg = AdaptiveConfig(enabled=True, recalibrate_bn=recalibrate_bn)
    paths = _brute_force(model, weights, mask, batches, cfg.ratios, cfg.path_points, recalibrate_bn)
    maxima = sorted(max(v) for v in paths.values())
    # Thresholds between the exhaustive path maxima exercise every possible answer.
    thresholds = [maxima[0] / 2] + [(a + b) / 2 for a, b in zip(maxima, maxima[1:])] + [maxima[-1] * 2]
    answers = set()
    for threshold in thresholds:
        # The rule: the largest ratio whose whole path stays below the threshold.
        expected = max((r for r in cfg.ratios if all(x <= threshold for x in paths[r])), default=None)
        if expected is not None and expected <= floor:
            expected = None  # the level prunes the floor either way
        result = sweep_ratio(model, weights, mask, batches, threshold, cfg, floor=floor)
        assert result.ratio == expected, (threshold, result.table)
        assert all(t['ratio'] > floor for t in result.table), 'ratios at or below the floor are never evaluated'
        if expected is None:  # the smallest candidate above the floor fails: one evaluation settles it
            assert result.forward_samples == 300 * (2 if recalibrate_bn else 1)
        passes = 2 if recalibrate_bn else 1
        assert result.forward_samples < len(cfg.ratios) * len(cfg.path_points) * 300 * passes
        assert result.forward_samples % (300 * passes) == 0
        answers.add(result.ratio)
        again = sweep_ratio(model, weights, mask, batches, threshold, cfg, floor=floor)
        assert again.ratio == result.ratio and again.table == result.table, 'sweep must be deterministic'
    assert len(answers) >= 3


def test_batchnorm_recalibration_matches_a_reference_pass(trained):
    import copy
    from torch import nn
    model, weights, batches = trained
    pruned = {k: (v * magnitude_prune(weights, full_mask(model), 0.8)[k] if k.endswith('conv.weight') else v)
              for k, v in weights.items()}
    ref = copy.deepcopy(model)
    ref.load_state_dict(pruned)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        for b in batches:
            ref(b)
    expected = evaluate_losses(model, [{k: v.detach() for k, v in ref.state_dict().items()}], batches)[0]
    got = evaluate_losses(model, [pruned], batches, recalibrate_bn=True)[0]
    plain = evaluate_losses(model, [pruned], batches)[0]
    assert got == pytest.approx(expected, rel=1e-5)
    assert abs(plain - got) > 1e-3, 'recalibration should change the loss of a heavily pruned BN net'
    assert torch.equal(model.state_dict()['module.bn.running_mean'], weights['module.bn.running_mean']), 'model untouched'


def test_interpolation_endpoints_are_exact(trained):
    _, weights, _ = trained
    other = {k: (v + 1 if v.is_floating_point() else v) for k, v in weights.items()}
    a, b = interpolate(weights, other, [0.0, 1.0])
    assert all(torch.equal(a[k], weights[k]) and torch.equal(b[k], other[k]) for k in weights)


def test_adaptive_run_prunes_max_of_sweep_and_floor(tmp_path, digits_loaders, tiny_model_fn):
    train, test = digits_loaders

    def kwargs_fn(model, level):
        return dict(optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train_dataloader=train,
                    eval_dataloader=test, max_duration='2ep', progress_bar=False, device='cpu', seed=1)

    imp = IMPConfig(levels=3, ratio=0.2, rewind='5ba', target_sparsity=0.5,
                    adaptive={'enabled': True, 'subsample': 200, 'batch_size': 100, 'baseline': 'train'})
    rows = find_ticket(tiny_model_fn, kwargs_fn, str(tmp_path), imp)
    assert rows[0]['epsilon'] > 0 and rows[0]['sweep'] is None
    for row in rows[1:]:
        sweep = row['sweep']
        assert sweep['threshold'] == pytest.approx(rows[0]['train_loss_mean'] + rows[0]['epsilon'])
        assert row['ratio'] == pytest.approx(max(sweep['chosen'] or 0.0, 0.2))
        assert row['compute'] == pytest.approx(row['steps'] + sweep['forward_samples'] / (3 * 64))
        assert sweep['forward_samples'] % 400 == 0  # whole passes over the 200-example subsample, recalibration counted
    assert rows[-1]['cumulative_compute'] == pytest.approx(sum(r['compute'] for r in rows))
    assert 1 - rows[-1]['weights_remaining'] >= 0.5 and (len(rows) == 4 or 1 - rows[-2]['weights_remaining'] < 0.5)
    assert json.loads((tmp_path / 'summary.json').read_text())['levels'][1]['sweep']['table']


@pytest.mark.parametrize('land', [True, False])
def test_the_ratio_that_lands_on_the_target_is_tried_and_saves_a_level(tmp_path, digits_loaders, tiny_model_fn, land):
    # Grid [0.1] with floor 0.05 and target 0.15: the grid alone needs two levels (0.9, then 0.81 remaining); the
    # landing ratio (exactly the weights the target removes, ~0.15 of a dense net) passes the sweep and needs one.
    train, test = digits_loaders

    def kwargs_fn(model, level):
        return dict(optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train_dataloader=train,
                    eval_dataloader=test, max_duration='2ep', progress_bar=False, device='cpu', seed=1)

    imp = IMPConfig(levels=3, ratio=0.05, rewind='5ba', target_sparsity=0.15,
                    adaptive={'enabled': True, 'subsample': 200, 'batch_size': 100, 'ratios': [0.1], 'land_on_target': land})
    rows = find_ticket(tiny_model_fn, kwargs_fn, str(tmp_path), imp)
    total = sparsity_report(full_mask(tiny_model_fn()))['total']
    allowed = int(0.85 * total + 1e-9)  # weights a 0.15 sparsity keeps
    sweep = rows[1]['sweep']
    if land:
        assert sweep['landing_ratio'] == pytest.approx((total - allowed) / total)
        assert [t['ratio'] for t in sweep['table']][-1] == sweep['landing_ratio']  # tried like any candidate
        assert sweep['chosen'] == sweep['landing_ratio'] and rows[1]['ratio'] == sweep['landing_ratio']
        assert len(rows) == 2 and rows[1]['weights_remaining'] == allowed / total  # exactly on the target
    else:
        assert sweep['landing_ratio'] is None and [t['ratio'] for t in sweep['table']] == [0.1]
        assert len(rows) == 3 and rows[1]['weights_remaining'] > 0.85


@pytest.mark.parametrize('override, message', [
    ('imp.adaptive.ratios=[0.5,1.2]', 'imp.adaptive.ratios must all lie strictly between 0 and 1'),
    ('imp.adaptive.ratios=[]', 'imp.adaptive.ratios is empty'),
    ('imp.adaptive.subsample=5000', 'imp.adaptive.subsample=5000 is larger than the training set (1437 examples)'),
    ('imp.adaptive.baseline=median', "imp.adaptive.baseline must be 'eval' or 'train'"),
    ('imp.adaptive.enable=true', "Did you mean 'imp.adaptive.enabled'"),
    ('imp.adaptive.reference=previous', "imp.adaptive.reference must be 'dense' or 'level'"),
    ('imp.target_sparsity=1.0', 'imp.target_sparsity must lie strictly between 0 and 1'),
])
def test_adaptive_bad_input(override, message, tmp_path, capsys):
    import run
    from conftest import ROOT
    code = run.main(['-f', f'{ROOT}/yamls/quickstart.yaml', f'save_folder={tmp_path}', 'imp.adaptive.enabled=true', override])
    assert code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
