"""AdaptiveIMP: ε from the dense run's loss noise, the ratio sweep, max(p, floor), and bad input."""

import json
import random
import statistics
from types import SimpleNamespace

import pytest
import torch

from composer_imp import AdaptiveIMP, find_ticket, full_mask
from composer_imp.adaptive import DEFAULT_RATIOS, largest_passing_ratio, sweep_ratio
from composer_imp.evaluate import evaluate_losses, fixed_subsample, interpolate
from composer_imp.loss_statistics import LossStatistics
from composer_imp.masks import magnitude_prune, sparsity_report

PATH_POINTS = (0.25, 0.5, 0.75, 1.0)  # AdaptiveIMP's default points on the path


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


@pytest.mark.parametrize('search', ['exhaustive', 'bisect'])
@pytest.mark.parametrize('recalibrate_bn, floor', [(True, 0.0), (False, 0.0), (True, 0.3)])
def test_sweep_matches_exhaustive_search_on_real_paths(trained, recalibrate_bn, floor, search):
    model, weights, batches = trained
    mask = full_mask(model)
    assert AdaptiveIMP().ratios == list(DEFAULT_RATIOS) and AdaptiveIMP().path_points == list(PATH_POINTS)
    assert AdaptiveIMP().search == 'exhaustive', "the default is the paper's rule"
    paths = _brute_force(model, weights, mask, batches, DEFAULT_RATIOS, PATH_POINTS, recalibrate_bn)
    maxima = sorted(max(v) for v in paths.values())
    # Thresholds between the exhaustive path maxima exercise every possible answer.
    thresholds = [maxima[0] / 2] + [(a + b) / 2 for a, b in zip(maxima, maxima[1:])] + [maxima[-1] * 2]
    answers = set()
    passes = 2 if recalibrate_bn else 1
    candidates = [r for r in DEFAULT_RATIOS if r > floor]
    for threshold in thresholds:
        # The paper's rule: the largest ratio whose whole path stays below the threshold.
        expected = max((r for r in DEFAULT_RATIOS if all(x <= threshold for x in paths[r])), default=None)
        if expected is not None and expected <= floor:
            expected = None  # the level prunes the floor either way
        result = sweep_ratio(model, weights, mask, batches, threshold, ratios=DEFAULT_RATIOS,
                             path_points=PATH_POINTS, recalibrate_bn=recalibrate_bn, floor=floor, search=search)
        assert result.ratio == expected, (threshold, result.table)
        assert all(t['ratio'] > floor for t in result.table), 'ratios at or below the floor are never evaluated'
        evaluated = sum(len(t['path_losses']) for t in result.table)
        assert result.forward_samples == evaluated * 300 * passes  # every forward pass counted
        if search == 'bisect' and expected is None:  # the smallest candidate above the floor fails: one evaluation
            assert evaluated == 1
        if search == 'exhaustive':  # every endpoint, interiors only of passing candidates down to the answer
            assert {t['ratio'] for t in result.table} == set(candidates)
            assert evaluated < len(candidates) * len(PATH_POINTS) or expected == min(candidates)
        answers.add(result.ratio)
        again = sweep_ratio(model, weights, mask, batches, threshold, ratios=DEFAULT_RATIOS,
                            path_points=PATH_POINTS, recalibrate_bn=recalibrate_bn, floor=floor, search=search)
        assert again.ratio == result.ratio and again.table == result.table, 'sweep must be deterministic'
    assert len(answers) >= 3


def _table_losses(table, calls):
    def losses(points):
        calls.append(list(points))
        return [table[r][b] for r, b in points]
    return losses


def test_the_paper_rule_holds_on_non_monotone_loss_tables():
    ratios, betas = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [0.5, 1.0]
    # The table: endpoints 0.3-0.5 -> 1.0, 0.6 -> 1.3, 0.7 -> 1.1, 0.8 -> 1.5; threshold 1.2.
    ends = {0.3: 1.0, 0.4: 1.0, 0.5: 1.0, 0.6: 1.3, 0.7: 1.1, 0.8: 1.5}
    table = {r: {0.5: e / 2, 1.0: e} for r, e in ends.items()}
    calls = []
    assert largest_passing_ratio(ratios, betas, _table_losses(table, calls), 1.2) == 0.7
    assert len(calls[0]) == len(ratios), 'all endpoints in one evaluation'
    assert largest_passing_ratio(ratios, betas, _table_losses(table, []), 1.2, 'bisect') == 0.5

    rng = random.Random(0)
    disagree = 0
    for _ in range(2000):
        table = {r: {b: rng.uniform(0, 2) for b in betas} for r in ratios}
        threshold = rng.uniform(0.5, 1.5)
        rule = max((r for r in ratios if all(v <= threshold for v in table[r].values())), default=None)
        assert largest_passing_ratio(ratios, betas, _table_losses(table, []), threshold) == rule
        disagree += largest_passing_ratio(ratios, betas, _table_losses(table, []), threshold, 'bisect') != rule
    assert disagree > 0, 'bisection assumes monotone endpoints, and random tables are not'
    # Interior points decide too: a candidate whose endpoint passes but whose middle does not is skipped.
    table = {r: {0.5: 0.1, 1.0: 0.1} for r in ratios}
    table[0.8][0.5] = float('nan')
    assert largest_passing_ratio(ratios, betas, _table_losses(table, []), 1.0) == 0.7


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


def test_adaptive_run_prunes_max_of_sweep_and_floor(tmp_path, make_trainer_factory):
    make_trainer = make_trainer_factory(imp=lambda: AdaptiveIMP(ratio=0.2, rewind='5ba', subsample=200, batch_size=100,
                                                                baseline='train'))
    rows = find_ticket(make_trainer, str(tmp_path), levels=3, target_sparsity=0.5, seed=1)
    assert rows[0]['epsilon'] > 0 and rows[0]['sweep'] is None
    for row in rows[1:]:
        sweep = row['sweep']
        assert sweep['threshold'] == pytest.approx(rows[0]['train_loss_mean'] + rows[0]['epsilon'])
        assert row['ratio'] == pytest.approx(max(sweep['chosen'] or 0.0, 0.2))
        assert row['compute'] == pytest.approx(row['steps'] + sweep['forward_samples'] / (3 * 64))
        # Whole passes over the 200-example subsample, one per evaluated network: the default keeps BatchNorm
        # statistics as the networks hold them (the paper's authors' evaluation), no recalibration pass.
        points = sum(len(t['path_losses']) for t in sweep['table'])  # baseline='train': no dense evaluation
        assert sweep['forward_samples'] == 200 * points
        saved = json.loads((tmp_path / f"level_{row['level']:02d}" / 'selection.json').read_text())
        assert saved == {'ratio': row['ratio'], 'sweep': sweep}, 'the sweep is saved with the mask it chose'
    assert rows[-1]['cumulative_compute'] == pytest.approx(sum(r['compute'] for r in rows))
    assert 1 - rows[-1]['weights_remaining'] >= 0.5 and (len(rows) == 4 or 1 - rows[-2]['weights_remaining'] < 0.5)
    assert json.loads((tmp_path / 'summary.json').read_text())['levels'][1]['sweep']['table']
    from omegaconf import OmegaConf
    recorded = OmegaConf.load(tmp_path / 'config.yaml').algorithms.AdaptiveIMP
    assert recorded.subsample == 200 and recorded.baseline == 'train'
    assert OmegaConf.load(tmp_path / 'config.yaml').target_sparsity == 0.5


def test_the_default_threshold_is_the_dense_loss_measured_like_the_paths(tmp_path, make_trainer_factory, trained,
                                                                          digits_loaders):
    """baseline='eval' (default): the dense solution's loss on the sweep's subsample by the sweep's own evaluator;
    epsilon='eval': the spread of that evaluator's per-batch losses at the training batch size (64)."""
    from composer_imp.evaluate import per_batch_losses
    assert AdaptiveIMP().baseline == 'eval' and AdaptiveIMP().epsilon == 'train' and not AdaptiveIMP().recalibrate_bn
    make_trainer = make_trainer_factory(imp=lambda: AdaptiveIMP(ratio=0.2, rewind='5ba', subsample=256, batch_size=128,
                                                                epsilon='eval'))
    rows = find_ticket(make_trainer, str(tmp_path), levels=2, seed=1)
    model, _, _ = trained
    dense = torch.load(tmp_path / 'level_00' / 'weights.pt', weights_only=True)
    train = digits_loaders[0].dataset  # the sweep reads the training set without augmentation (digits: as is)
    subsample = fixed_subsample(train, 256, 128)
    first = rows[1]['sweep']
    # BatchNorm statistics as the networks hold them (the default), in the threshold as on the paths.
    assert first['dense_loss'] == pytest.approx(evaluate_losses(model, [dense], subsample, False)[0], rel=1e-5)
    assert first['dense_loss'] != pytest.approx(evaluate_losses(model, [dense], subsample, True)[0], rel=1e-5)
    losses = per_batch_losses(model, dense, fixed_subsample(train, 256, 64), False)
    assert len(losses) == 4 and first['epsilon_source'] == 'eval'
    assert first['epsilon'] == pytest.approx(statistics.stdev(losses), rel=1e-5)
    assert first['threshold'] == pytest.approx(first['dense_loss'] + first['epsilon'])
    second = rows[2]['sweep']  # measured once per run, reused by later sweeps and not counted again
    assert (second['dense_loss'], second['epsilon']) == (first['dense_loss'], first['epsilon'])
    passes = sum(len(t['path_losses']) for t in second['table'])
    assert second['forward_samples'] == passes * 256  # one pass per network: no recalibration pass
    assert first['forward_samples'] == (sum(len(t['path_losses']) for t in first['table']) + 2) * 256


def test_train_mode_statistics_are_refused_beside_loss_changing_algorithms(tmp_path, make_trainer_factory):
    from composer.algorithms import LabelSmoothing
    for kwargs, message in (({}, "epsilon='train'"), ({'baseline': 'train', 'epsilon': 'eval'}, "baseline='train'")):
        make_trainer = make_trainer_factory(imp=lambda: [AdaptiveIMP(rewind='5ba', subsample=256, **kwargs),
                                                         LabelSmoothing(0.1)])
        with pytest.raises(ValueError, match=f"{message}.*LabelSmoothing.*Set baseline='eval' and epsilon='eval'"):
            find_ticket(make_trainer, str(tmp_path / 'refused'), levels=1)
        assert not (tmp_path / 'refused').exists()
    make_trainer = make_trainer_factory(imp=lambda: [AdaptiveIMP(rewind='5ba', subsample=256, epsilon='eval'),
                                                     LabelSmoothing(0.1)])
    rows = find_ticket(make_trainer, str(tmp_path / 'accepted'), levels=1)
    assert rows[1]['sweep']['epsilon_source'] == 'eval' and rows[1]['sweep']['baseline'] == 'eval'


@pytest.mark.parametrize('land', [True, False])
def test_the_ratio_that_lands_on_the_target_is_tried_and_saves_a_level(tmp_path, make_trainer_factory, land):
    # Grid [0.1] with floor 0.05 and target 0.15: the grid alone needs two levels (0.9, then 0.81 remaining); the
    # landing ratio (exactly the weights the target removes, ~0.15 of a dense net) passes the sweep and needs one.
    from composer.models import ComposerClassifier
    from conftest import TinyNet
    make_trainer = make_trainer_factory(imp=lambda: AdaptiveIMP(ratio=0.05, rewind='5ba', subsample=200, batch_size=100,
                                                                ratios=[0.1], land_on_target=land))
    rows = find_ticket(make_trainer, str(tmp_path), levels=3, target_sparsity=0.15, seed=1)
    total = sparsity_report(full_mask(ComposerClassifier(TinyNet(), num_classes=10)))['total']
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


def _adaptive_yaml(tmp_path, **adaptive):
    """yamls/quickstart.yaml with AdaptiveIMP in place of IMP (overrides cannot remove algorithms.IMP)."""
    from omegaconf import OmegaConf
    from conftest import ROOT
    cfg = OmegaConf.load(f'{ROOT}/yamls/quickstart.yaml')
    cfg.algorithms = {'AdaptiveIMP': {'ratio': 0.2, 'rewind': '23ba', **adaptive}}
    cfg.save_folder = str(tmp_path / 'run')
    cfg.progress_bar = False  # Composer's progress bar asks sys.stderr for a fileno, which capsys's has not
    path = tmp_path / 'adaptive.yaml'
    OmegaConf.save(cfg, path)
    return path


@pytest.mark.parametrize('override, message', [
    ('algorithms.AdaptiveIMP.ratios=[0.5,1.2]',
     "algorithms.AdaptiveIMP: could not build AdaptiveIMP({'ratio': 0.2, 'rewind': '23ba', 'ratios': [0.5, 1.2]}): "
     'AdaptiveIMP ratios must all lie strictly between 0 and 1; got [1.2]'),
    ('algorithms.AdaptiveIMP.ratios=[]', 'AdaptiveIMP ratios is empty'),
    ('algorithms.AdaptiveIMP.path_points=[0.5,1.5]', 'AdaptiveIMP path_points must be points β in (0, 1]'),
    ('algorithms.AdaptiveIMP.subsample=0', 'AdaptiveIMP subsample must be a positive number of training examples'),
    ('algorithms.AdaptiveIMP.subsample=5000', 'AdaptiveIMP subsample=5000 is larger than the training set (1437 examples)'),
    ('algorithms.AdaptiveIMP.baseline=median', "AdaptiveIMP baseline must be 'eval' or 'train'"),
    ('algorithms.AdaptiveIMP.enabled=true', 'algorithms.AdaptiveIMP.enabled is not an argument of AdaptiveIMP'),
    ('algorithms.AdaptiveIMP.subsampel=100',
     "algorithms.AdaptiveIMP.subsampel is not an argument of AdaptiveIMP (did you mean 'algorithms.AdaptiveIMP.subsample'?)"),
    ('algorithms.AdaptiveIMP.reference=previous', "AdaptiveIMP reference must be 'dense' or 'level'"),
    ('algorithms.AdaptiveIMP.ratio=1.0', "could not build AdaptiveIMP({'ratio': 1.0, 'rewind': '23ba'}): AdaptiveIMP ratio must "
                                         'lie strictly between 0 and 1'),
    ('target_sparsity=1.0', 'target_sparsity must lie strictly between 0 and 1'),
])
def test_adaptive_bad_input(override, message, tmp_path, capsys):
    import run
    code = run.main(['-f', str(_adaptive_yaml(tmp_path)), override])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / 'run').exists() or not list((tmp_path / 'run').iterdir())


def test_adaptive_bad_input_in_python(tmp_path, make_trainer_factory):
    """The same refusals from find_ticket: a bad component never gets to train."""
    with pytest.raises(ValueError, match=r'AdaptiveIMP subsample must be a positive number'):
        AdaptiveIMP(subsample=-5)
    make_trainer = make_trainer_factory(imp=lambda: AdaptiveIMP(ratio=0.2, rewind='5ba', subsample=5000))
    with pytest.raises(ValueError, match=r'AdaptiveIMP subsample=5000 is larger than the training set \(1437 examples\); '
                                         r'choose at most 1437'):
        find_ticket(make_trainer, str(tmp_path / 'run'), levels=1)
    assert not (tmp_path / 'run').exists() or not list((tmp_path / 'run').iterdir())
    assert all(r.start is None for r in make_trainer.records)
