"""Error-landscape analysis: barriers, linear paths through the shared evaluation primitive, a real run end to end."""

import json
import logging
import re
import shutil

import pytest
import torch

from composer_imp.connectivity import error_barrier, linear_path
from composer_imp.criteria import iff_verdict

from conftest import ROOT


def test_barrier_of_a_constructed_path():
    betas = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert error_barrier([0.1, 0.1, 0.1, 0.1, 0.1], betas) == 0.0
    # endpoints 0.10 and 0.30: the chord at 0.5 is 0.20; a bump to 0.45 there is a barrier of 0.25
    assert error_barrier([0.10, 0.15, 0.45, 0.25, 0.30], betas) == pytest.approx(0.25)
    assert error_barrier([0.2, 0.1, 0.0, 0.1, 0.2], betas) == 0.0  # below the chord: no barrier
    with pytest.raises(ValueError, match='endpoints'):
        error_barrier([0.1, 0.2], [0.2, 0.8])


def test_connected_iff_matching_is_judged_over_pruned_pairs_with_the_dense_pair_apart():
    def pair(a, matching, connected):
        return {'from': a, 'to': a + 1, 'both_matching': matching, 'connected': connected}

    # The dense network not yet stable at τ: levels 0 and 1 match but are not connected (the paper's Fig. 3). That
    # pair does not decide the claim; the pruned pairs agree, including one beyond the matching limit.
    verdict = iff_verdict([pair(0, True, False), pair(1, True, True), pair(2, True, True), pair(3, False, False)])
    assert verdict['holds'] is True
    assert verdict['dense_pair'] == {'from': 0, 'to': 1, 'matching': True, 'connected': False, 'agree': False}
    assert [p['agree'] for p in verdict['pairs']] == [True, True, True]
    assert iff_verdict([pair(0, True, True), pair(1, False, True)])['holds'] is False  # connected, not matching
    assert iff_verdict([pair(0, True, True)])['holds'] is None  # no pair of pruned levels yet


def test_path_endpoints_reproduce_the_endpoint_networks(digits_loaders, tiny_model_fn):
    from composer_imp.evaluate import evaluate
    model = tiny_model_fn()
    a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    b = {k: (v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in a.items()}
    batches = list(digits_loaders[1])
    path = linear_path(model, a, b, batches, [0.0, 0.5, 1.0])
    ends = evaluate(model, [a, b], batches)
    assert path['errors'][0] == ends[0]['error'] and path['errors'][-1] == ends[1]['error']
    assert path['losses'][0] == pytest.approx(ends[0]['loss'], rel=1e-6)
    model.load_state_dict(b)  # the plain way: load the weights and run the model
    model.eval()
    with torch.no_grad():
        wrong = sum(int((model(batch).argmax(1) != batch[1]).sum()) for batch in batches)
    assert path['errors'][-1] == pytest.approx(wrong / 360)


QUICK = f'{ROOT}/yamls/quickstart.yaml'
RUN = ['levels=2', 'max_duration=3ep', 'eval_interval=3ep', 'model.width=8', 'progress_bar=false']


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def yaml_run(tmp_path_factory):
    """One real run from the quickstart YAML with the analysis right after the levels: (folder, logged lines)."""
    import run
    folder = tmp_path_factory.mktemp('yaml_run')
    records, logger = _Records(), logging.getLogger('composer_imp')
    logger.addHandler(records)
    try:
        code = run.main(['-f', QUICK, f'save_folder={folder}', *RUN, 'analysis.enabled=true', 'analysis.betas=[0,0.5,1]',
                         'analysis.planes=0'])
    finally:
        logger.removeHandler(records)
    assert code == 0
    return folder, records.messages


def test_analysis_of_a_real_run_end_to_end(yaml_run):
    from composer_imp.analysis import LandscapeSettings, analyze_run
    from composer_imp.config import load_config
    from composer_imp.recipes import build_recipe
    folder, messages = yaml_run
    assert any('connected iff matching' in m for m in messages), messages  # the analysis ran right after the levels
    first = (folder / 'analysis' / 'analysis.json').read_text()
    # Again from Python, with the recipe's model (post-surgery names) and eval loader: the same numbers.
    recipe = build_recipe(load_config(QUICK, [f'save_folder={folder}', *RUN]))
    model = recipe.analysis_model()
    result = analyze_run(str(folder), model, recipe.eval_dataloader, recipe.sweep_data,
                         settings=LandscapeSettings(betas=[0.0, 0.5, 1.0]))
    assert (folder / 'analysis' / 'analysis.json').read_text() == first, 'deterministic'
    assert json.loads(first) == json.loads(json.dumps(result))
    # LCS-set membership (Definition 2.1), recomputed here from the run's files: the projection m_{L+1} ⊙ w_L and
    # w_{L+1} are in the set of w_L when the whole line from w_L stays within E(w_L) + ε (test error; training loss
    # on the fixed un-augmented training subsample with the dense run's ε).
    from composer_imp.connectivity import linear_path
    from composer_imp.evaluate import fixed_subsample
    rows = json.loads((folder / 'summary.json').read_text())['levels']
    train = fixed_subsample(recipe.sweep_data, 1024, 256)
    assert [e['level'] for e in result['lcs']] == [0, 1]
    for entry in result['lcs']:
        level = entry['level']
        w = torch.load(folder / f'level_{level:02d}' / 'weights.pt', weights_only=True)
        nxt = torch.load(folder / f'level_{level + 1:02d}' / 'weights.pt', weights_only=True)
        mask = torch.load(folder / f'level_{level + 1:02d}' / 'mask.pt', weights_only=True)
        proj = {k: v * mask[k] if k in mask else v for k, v in w.items()}
        for end, target in (('projection', proj), ('next', nxt)):
            test = linear_path(model, w, target, recipe.eval_dataloader, [0.0, 0.5, 1.0])['errors']
            assert entry[end]['test'] == (max(test) <= test[0] + result['tolerance'])
            assert entry[end]['max_error'] == pytest.approx(max(test))
            losses = linear_path(model, w, target, train, [0.0, 0.5, 1.0])['losses']
            assert entry[end]['max_train_loss'] == pytest.approx(max(losses), rel=1e-5)
            assert entry[end]['train'] == (max(losses) <= losses[0] + rows[0]['epsilon'])
    assert 'LCS-set of w_L' in (folder / 'analysis' / 'report.md').read_text()
    summary = json.loads((folder / 'summary.json').read_text())['levels']
    assert [r['level'] for r in result['levels']] == [0, 1, 2]
    for r, s in zip(result['levels'], summary):
        assert r['error'] == pytest.approx(1 - s['accuracy'], abs=1e-6), 'same numbers as the trainer measured'
    assert [(s['from'], s['to']) for s in result['successive']] == [(0, 1), (1, 2)]
    matrix = result['pairwise']['barrier']
    assert len(matrix) == 3 and matrix[0][2] == matrix[2][0] is not None and matrix[1][1] == 0.0
    assert result['connected_iff_matching'] == all(s['connected'] == s['both_matching'] for s in result['successive'])
    for name in ('error_vs_weights_remaining.png', 'successive_paths.png', 'pairwise.png'):
        data = (folder / 'analysis' / name).read_bytes()
        assert data[:4] == b'\x89PNG' and len(data) > 10_000
    assert 'Connected iff matching' in (folder / 'analysis' / 'report.md').read_text()


def test_analyze_command_reads_the_run_config_and_repeats_the_analysis(yaml_run, caplog):
    """python -m composer_imp.analyze rebuilds the recipe from the config.yaml the run recorded."""
    from composer_imp import analyze
    folder, _ = yaml_run
    first = (folder / 'analysis' / 'analysis.json').read_text()
    with caplog.at_level(logging.INFO, logger='composer_imp'):
        assert analyze.main([str(folder), '--betas', '0,0.5,1']) == 0
    assert (folder / 'analysis' / 'analysis.json').read_text() == first
    assert any('analysis of 3 levels written to' in m for m in caplog.messages), caplog.messages


def test_analysis_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from composer_imp import analyze
    assert analyze.main([str(tmp_path)]) == 2
    assert 'is not an IMP run' in capsys.readouterr().err


def _plane_networks(model):
    """w_L, its projection m ⊙ w_L (half the prunable weights), and a w_L+1 trained (here: moved) inside m."""
    from composer_imp.masks import full_mask, magnitude_prune
    torch.manual_seed(1)
    a = {k: (v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    mask = magnitude_prune(a, full_mask(model), 0.5)
    p = {k: v * mask[k] if k in mask else v for k, v in a.items()}
    b = {k: (v + 0.2 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in p.items()}
    b = {k: v * mask[k] if k in mask else v for k, v in b.items()}
    return a, p, b, mask


def test_plane_axes_are_orthogonal_and_the_axial_line_is_exactly_sparse(tiny_model_fn):
    from composer_imp.connectivity import PlaneFrame, plane_point
    model = tiny_model_fn()
    a, p, b, mask = _plane_networks(model)
    prunable = set(mask)
    frame = PlaneFrame.of(a, p, b, prunable)
    # The projection and w_L+1 sit at (0, 0) and (1, 0); w_L at (a_x, a_y), orthogonal axes.
    for (x, y), expected in (((0.0, 0.0), p), ((1.0, 0.0), b), ((frame.a_x, frame.a_y), a)):
        point = plane_point(p, b, a, frame, x, y, prunable)
        assert all(torch.allclose(point[k], expected[k], atol=1e-6) for k in a if a[k].is_floating_point())
    def flat(w):
        return torch.cat([w[k].flatten().double() for k in sorted(prunable)])
    along, towards = flat(b) - flat(p), flat(a) - flat(p) - frame.a_x * (flat(b) - flat(p))
    assert abs(float(along @ towards)) < 1e-6 * float(along.norm() * towards.norm())
    assert float(towards.norm() / along.norm()) == pytest.approx(frame.a_y, rel=1e-6)
    # Every point of the drawn axial line (y = 0), inside and beyond the two networks, has its pruned coordinates
    # exactly zero: it lies in the axial subspace of m_L+1.
    for x in (-0.7, 0.0, 0.3, 1.0, 1.9):
        point = plane_point(p, b, a, frame, x, 0.0, prunable)
        assert all(torch.count_nonzero(point[k][~mask[k]]) == 0 for k in mask)
    off = plane_point(p, b, a, frame, 0.3, 0.01, prunable)
    assert any(torch.count_nonzero(off[k][~mask[k]]) > 0 for k in mask)
    # Outside the triangle the non-prunable tensors take the closest point's values: below the axial line at
    # x = 0.5, the closest point of the triangle is (0.5, 0), halfway from the projection to w_L+1.
    below = plane_point(p, b, a, frame, 0.5, -0.3, prunable)
    assert torch.allclose(below['module.fc.bias'], 0.5 * (p['module.fc.bias'] + b['module.fc.bias']), atol=1e-6)


def test_plane_slice_grid_and_anchors_match_pointwise_evaluation(digits_loaders, tiny_model_fn):
    from composer_imp.connectivity import PlaneFrame, plane_point, plane_slice
    from composer_imp.evaluate import evaluate
    model = tiny_model_fn()
    a, p, b, mask = _plane_networks(model)
    batches = list(digits_loaders[1])
    sl = plane_slice(model, a, p, b, batches, set(mask), grid=3, chunk=4)
    frame = PlaneFrame.of(a, p, b, set(mask))
    assert sl['xs'][0] < min(0, frame.a_x) and sl['xs'][-1] > max(1, frame.a_x) and sl['ys'][0] < 0 < frame.a_y < sl['ys'][-1]
    single = evaluate(model, [plane_point(p, b, a, frame, sl['xs'][2], sl['ys'][0], set(mask))], batches)[0]['error']
    assert sl['errors'][0][2] == single  # errors[j][i] at (xs[i], ys[j])
    own = [r['error'] for r in evaluate(model, [a, p, b], batches)]  # the three networks' own errors, exactly
    assert [sl['anchors'][k]['error'] for k in ('w_L', 'projection', 'next')] == own
    assert (sl['anchors']['projection']['x'], sl['anchors']['next']['x']) == (0.0, 1.0)


@pytest.mark.slow
def test_killed_analysis_resumes_from_its_cache_and_never_replaces_other_settings_silently(tmp_path, yaml_run, capsys,
                                                                                         caplog):
    import signal
    import subprocess
    import sys
    import time
    shutil.copytree(yaml_run[0], tmp_path, dirs_exist_ok=True)  # the finished levels of a real run, moved
    shutil.rmtree(tmp_path / 'analysis')
    cmd = [sys.executable, '-m', 'composer_imp.analyze', str(tmp_path), '--planes', '11', '--betas', '0,0.5,1']
    log = tmp_path.parent / f'{tmp_path.name}-analyze.log'
    with open(log, 'w') as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    first_plane = tmp_path / 'analysis' / 'cache' / 'slice_00_11.json'
    deadline = time.time() + 300
    while not first_plane.exists():
        assert proc.poll() is None and time.time() < deadline, f'the analysis ended before the kill point: {log.read_text()[-2000:]}'
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / 'analysis' / 'analysis.json').exists()

    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Killed once the first plane was cached: at least 3 levels, 3 paths and that plane are reused, not all 12
    # evaluations (2 planes, 2 projection paths and 2 training-loss entries of the LCS-set follow).
    reused = int(re.search(r'reused (\d+) finished evaluation', resumed.stderr).group(1))
    assert 7 <= reused < 12, resumed.stderr
    assert 'analysis of 3 levels written to' in resumed.stderr, resumed.stderr  # the command's own summary line
    text = (tmp_path / 'analysis' / 'analysis.json').read_text()

    # The rest through the same command's entry point in this process (the crash above needed a real process).
    from composer_imp.analyze import main as analyze
    caplog.set_level(logging.INFO, logger='composer_imp')
    args = cmd[3:]
    shutil.rmtree(tmp_path / 'analysis')
    assert analyze(args) == 0 and 'reused' not in caplog.text, caplog.text[-2000:]
    assert (tmp_path / 'analysis' / 'analysis.json').read_text() == text, 'resumed analysis == uninterrupted analysis'

    capsys.readouterr()
    assert analyze(args + ['--tolerance', '0.02']) == 2
    err = capsys.readouterr().err
    assert 'tolerance: 0.01 -> 0.02' in err and '--overwrite' in err, err
    assert (tmp_path / 'analysis' / 'analysis.json').read_text() == text
    caplog.clear()
    assert analyze(args + ['--tolerance', '0.02', '--overwrite']) == 0
    assert 'reused 12' in caplog.text, caplog.text[-2000:]  # none depends on it
    assert json.loads((tmp_path / 'analysis' / 'analysis.json').read_text())['tolerance'] == 0.02


@pytest.mark.slow
def test_replicates_train_one_run_per_seed_and_define_matching_by_the_dense_spread(tmp_path, capsys, caplog):
    import statistics
    import run
    from omegaconf import OmegaConf
    caplog.set_level(logging.INFO, logger='composer_imp')
    args = ['-f', QUICK, f'save_folder={tmp_path / "reps"}', 'replicates=3', 'levels=2',
            'max_duration=3ep', 'eval_interval=3ep', 'model.width=8', 'progress_bar=false', 'analysis.betas=[0,0.5,1]',
            'analysis.planes=0']
    assert run.main([*args[:3], 'replicates=2', *args[4:]]) == 0
    caplog.clear()
    assert run.main(args) == 0  # a third replicate joins: ε and every replicate's tolerance move with it
    assert sum('already done' in m for m in caplog.messages) == 6, caplog.messages  # replicates 0 and 1 reused
    folders = [tmp_path / 'reps' / f'replicate_{i:02d}' for i in range(3)]
    assert [OmegaConf.load(f / 'config.yaml').seed for f in folders] == [17, 18, 19]
    dense = [torch.load(f / 'level_00' / 'weights.pt', weights_only=True) for f in folders]
    assert not torch.equal(dense[0]['module.fc.weight'], dense[1]['module.fc.weight']), 'replicates differ'
    result = json.loads((tmp_path / 'reps' / 'analysis' / 'replicates.json').read_text())
    # ε is the spread of the dense test error measured by the evaluator that judges the levels (the same numbers as
    # the Trainer's accuracy, up to its float32 rounding).
    errors = [json.loads((f / 'analysis' / 'analysis.json').read_text())['levels'][0]['error'] for f in folders]
    trainer_errors = [1 - json.loads((f / 'summary.json').read_text())['levels'][0]['accuracy'] for f in folders]
    assert errors == pytest.approx(trainer_errors, abs=1e-6)
    assert result['epsilon'] == pytest.approx(statistics.stdev(errors)) and result['epsilon'] > 0
    assert result['tolerance'] == result['epsilon'] and result['seeds'] == [17, 18, 19]
    for row in result['levels']:
        assert len(row['error']['values']) == 3
        assert row['error']['mean'] == pytest.approx(statistics.fmean(row['error']['values']))
        assert row['matching'] == (row['error']['mean'] <= result['dense_error']['mean'] + result['epsilon'])
    for f in folders:  # each replicate's own analysis uses ε as its tolerance
        assert json.loads((f / 'analysis' / 'analysis.json').read_text())['tolerance'] == result['epsilon']
    analyses = [json.loads((f / 'analysis' / 'analysis.json').read_text()) for f in folders]
    n = len(result['levels'])
    for i in range(n):  # Appendix C's heatmap: the max error along each path, averaged over replicates
        for j in range(n):
            values = [a['pairwise']['max_error'][i][j] for a in analyses]
            assert result['pairwise']['max_error'][i][j] == pytest.approx(statistics.fmean(values))
    for k, path in enumerate(result['successive']):  # Figure 2 left: mean ± std of the error at every β
        assert path['betas'] == [0.0, 0.5, 1.0]
        for b, stats in enumerate(path['errors']):
            values = [a['successive'][k]['errors'][b] for a in analyses]
            assert stats['mean'] == pytest.approx(statistics.fmean(values))
            assert stats['std'] == pytest.approx(statistics.stdev(values))
    assert result['verdict']['holds'] == result['connected_iff_matching']
    assert [(p['from'], p['to']) for p in result['verdict']['pairs']] == [(1, 2)]
    for name in ('replicates.png', 'pairwise.png'):
        assert (tmp_path / 'reps' / 'analysis' / name).stat().st_size > 10_000
    assert 'Connected iff matching' in (tmp_path / 'reps' / 'analysis' / 'replicates.md').read_text()
    first = (tmp_path / 'reps' / 'analysis' / 'replicates.json').read_text()
    caplog.clear()
    assert run.main(args) == 0  # the same command again: every level of every replicate is reused
    assert sum('already done' in m for m in caplog.messages) == 9, caplog.messages
    assert (tmp_path / 'reps' / 'analysis' / 'replicates.json').read_text() == first

    capsys.readouterr()
    assert run.main([*args[:2], f'save_folder={tmp_path / "reps" / "replicate_00"}', *args[3:]]) == 2
    assert 'holds a single IMP run' in capsys.readouterr().err
    assert run.main([*args[:3], 'replicates=0', *args[4:]]) == 2
    assert 'replicates=0 must be at least 1' in capsys.readouterr().err

    from composer_imp import analyze
    # A replicate analysed alone is judged by what its own folder and the command say, never by a file outside it:
    # the default tolerance differs from the recorded ε, so it is refused by name; the replicates' ε given, it agrees.
    recorded = (folders[0] / 'analysis' / 'analysis.json').read_text()
    capsys.readouterr()
    assert analyze.main([str(folders[0]), '--betas', '0,0.5,1']) == 2
    assert f'tolerance: {result["epsilon"]!r} -> 0.01' in capsys.readouterr().err
    assert (folders[0] / 'analysis' / 'analysis.json').read_text() == recorded
    assert analyze.main([str(folders[0]), '--betas', '0,0.5,1', '--tolerance', repr(result['epsilon'])]) == 0
    assert json.loads((folders[0] / 'analysis' / 'analysis.json').read_text())['tolerance'] == result['epsilon']
