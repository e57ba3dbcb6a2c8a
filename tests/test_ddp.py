"""IMP under Composer's launcher (`composer -n 2`, gloo on CPU): identical masks and weights on every rank,
adaptive ratios broadcast, bad world sizes refused, and a killed run resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT

pytestmark = pytest.mark.slow  # launcher subprocesses, SIGKILL, format round trips: `-m 'not slow'` skips them

QUICKSTART = os.path.join(ROOT, 'yamls', 'quickstart.yaml')
COMMON = ['levels=2', 'max_duration=2ep', 'eval_interval=1ep', 'progress_bar=false', 'model.width=4',
          'analysis.enabled=false']


def _tiny(component='IMP'):
    """Two short levels, pruning half the remaining weights each, rewinding to step 10."""
    return [*COMMON, f'algorithms.{component}.ratio=0.5', f'algorithms.{component}.rewind=10ba']


TINY = _tiny()


def _with_component(tmp_path, recipe, component):
    """``recipe`` with its ``algorithms.IMP`` replaced by ``component`` (same settings), written into tmp_path.

    (A dotted override can add ``algorithms.AdaptiveIMP.*`` but cannot remove ``algorithms.IMP``.)"""
    cfg = OmegaConf.load(recipe)
    cfg.algorithms = {component: OmegaConf.to_container(cfg.algorithms.IMP)}
    path = tmp_path / f'{component}_{os.path.basename(recipe)}'
    OmegaConf.save(cfg, path)
    return str(path)


def _launch(tmp_path, script_args, port, name='rank', **popen):
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '2', '--master_port', str(port),
           '--stdout', str(tmp_path / f'{name}{{rank}}.out'), '--stderr', str(tmp_path / f'{name}{{rank}}.err'), *script_args]
    return cmd


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return proc


def _logs(tmp_path):
    return ''.join(p.read_text() for p in sorted(tmp_path.glob('*.out')) + sorted(tmp_path.glob('*.err')))


def _script(out, *overrides, recipe=QUICKSTART):
    return [os.path.join(ROOT, 'tests', 'ddp_imp_script.py'), recipe, str(out), *overrides]


def _assert_ranks_agree(out, run, levels):
    for level in range(levels):
        r0 = torch.load(out / f'rank0_level{level}.pt', weights_only=True)
        r1 = torch.load(out / f'rank1_level{level}.pt', weights_only=True)
        # BatchNorm running statistics are rank-local between DDP's buffer broadcasts; parameters must agree bit for bit.
        for k in [k for k in r0['weights'] if 'running_' not in k and 'num_batches' not in k]:
            assert torch.equal(r0['weights'][k], r1['weights'][k]), f'level {level}: {k} differs across ranks'
        if level:
            saved = torch.load(run / f'level_{level:02d}' / 'mask.pt', weights_only=True)
            assert saved and set(r0['mask']) == set(r1['mask']) == set(saved)
            for k, m in saved.items():
                assert torch.equal(r0['mask'][k], m) and torch.equal(r1['mask'][k], m)
                assert torch.all(r0['weights'][k][~m] == 0)


def test_two_ranks_hold_identical_masks_weights_and_adaptive_ratios_and_split_the_analysis(tmp_path):
    out = tmp_path / 'dump'
    out.mkdir()
    run = tmp_path / 'run'
    recipe = _with_component(tmp_path, QUICKSTART, 'AdaptiveIMP')
    analysis = ['analysis.enabled=true', 'analysis.betas=[0,0.5,1]', 'analysis.planes=4']
    sweep = ['algorithms.AdaptiveIMP.subsample=128', 'algorithms.AdaptiveIMP.batch_size=64',
             'algorithms.AdaptiveIMP.baseline=eval',
             'algorithms.AdaptiveIMP.ratio=0.1']  # floor 0.1: the sweep evaluates 0.2 ... 0.9
    overrides = [f'save_folder={run}', *_tiny('AdaptiveIMP'), *sweep, 'data.eval_subset=359', 'eval_interval=2ep',
                 *analysis]
    proc = _run(_launch(tmp_path, _script(out, *overrides, recipe=recipe), 29613))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + _logs(tmp_path)[-4000:]
    _assert_ranks_agree(out, run, 3)
    rows = json.loads((run / 'summary.json').read_text())['levels']
    assert len(rows) == 3, 'outputs are written once, by rank 0'
    assert 'AdaptiveIMP' in OmegaConf.load(run / 'config.yaml').algorithms
    for level in range(3):  # one evaluation per level over an odd-sized eval set: every example exactly once
        seen = [torch.load(out / f'rank{r}_level{level}.pt', weights_only=True)['eval_seen'] for r in (0, 1)]
        assert seen == [180, 179], seen  # the sampler pads rank 1 by one example; Composer's eval loop drops it
    assert all(r['sweep'] and r['ratio'] == max(r['sweep']['chosen'] or 0, 0.1) for r in rows[1:])
    from composer_imp.config import load_config
    from composer_imp.recipes import build_recipe
    single_process = build_recipe(load_config(recipe, overrides))
    _assert_sharded_sweep_equals_single_process(run, rows, single_process)

    # The analysis after the levels ran on both ranks, each evaluating every path and plane point on its half of
    # the odd-sized eval set with the sums all-reduced: it equals the single-process analysis of the same run.
    from composer_imp.analysis import LandscapeSettings, analyze_run
    two_ranks = json.loads((run / 'analysis' / 'analysis.json').read_text())
    (run / 'analysis').rename(tmp_path / 'two_ranks_analysis')  # its cache must not answer for the single process
    expected = analyze_run(str(run), single_process.analysis_model(), single_process.eval_dataloader,
                           single_process.sweep_data, LandscapeSettings(betas=[0, 0.5, 1], planes=4))
    assert [r['level'] for r in two_ranks['levels']] == [r['level'] for r in expected['levels']] == [0, 1, 2]
    assert [r['error'] for r in two_ranks['levels']] == [r['error'] for r in expected['levels']]
    assert len(two_ranks['successive']) == len(expected['successive']) == 2
    for a, b in zip(two_ranks['successive'], expected['successive']):
        assert a['errors'] == b['errors'] and a['losses'] == pytest.approx(b['losses'], rel=1e-5)
    assert len(two_ranks['planes']) == len(expected['planes']) == 2
    assert [p['errors'] for p in two_ranks['planes']] == [p['errors'] for p in expected['planes']]
    assert two_ranks['pairwise']['barrier'] == expected['pairwise']['barrier']


def _assert_sharded_sweep_equals_single_process(run, rows, recipe):
    """Each rank swept its half of the 128-example subsample (one of the two batches), BatchNorm statistics and loss
    sums all-reduced: the recorded sweep equals the same sweep computed here in one process on all of it."""
    from composer_imp import AdaptiveIMP
    from composer_imp.adaptive import sweep_ratio
    from composer_imp.run_folder import RunFolder
    from composer_imp.evaluate import evaluate_losses, fixed_subsample
    from composer_imp.masks import load_mask

    adaptive = AdaptiveIMP(**OmegaConf.to_container(recipe.cfg.algorithms.AdaptiveIMP, resolve=True))
    assert (adaptive.subsample, adaptive.batch_size, adaptive.baseline, adaptive.ratio) == (128, 64, 'eval', 0.1)
    folder, model = RunFolder(str(run)), recipe.analysis_model()
    batches = fixed_subsample(recipe.sweep_data, adaptive.subsample, adaptive.batch_size)
    assert len(batches) == 2  # so each rank had one
    dense = evaluate_losses(model, [folder.load_weights(0)], batches, adaptive.recalibrate_bn)[0]
    for level in (1, 2):
        recorded = rows[level]['sweep']
        assert recorded['dense_loss'] == pytest.approx(dense, rel=1e-5)
        single = sweep_ratio(model, folder.load_weights(level - 1), load_mask(folder.mask(level - 1)), batches,
                             recorded['threshold'], adaptive.ratios, adaptive.path_points, adaptive.recalibrate_bn,
                             adaptive.scope, floor=adaptive.ratio)
        assert len(single.table) >= 2  # several paths compared, not one
        assert recorded['chosen'] == single.ratio
        assert [t['ratio'] for t in recorded['table']] == [t['ratio'] for t in single.table]
        for a, b in zip(recorded['table'], single.table):
            assert a['within'] == b['within'] and list(a['path_losses']) == list(b['path_losses'])
            assert list(a['path_losses'].values()) == pytest.approx(list(b['path_losses'].values()), rel=1e-5)
        # Samples of both ranks counted once: the sweep's, plus the dense loss on the whole subsample, measured once
        # per run at the first sweep (one evaluation pass, 128; a recalibration pass more with recalibrate_bn) and
        # reused after.
        dense_pass = 128 * (2 if adaptive.recalibrate_bn else 1)
        assert recorded['forward_samples'] == single.forward_samples + (dense_pass if level == 1 else 0)


def test_world_size_that_does_not_divide_the_batch_is_refused(tmp_path):
    proc = _run(_launch(tmp_path, [os.path.join(ROOT, 'run.py'), '-f', os.path.join(ROOT, 'yamls', 'quickstart.yaml'),
                                   f'save_folder={tmp_path / "run"}', 'data.batch_size=63'], 29614))
    logs = _logs(tmp_path) + proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'data.batch_size=63 must be a positive multiple of the world size 2' in logs
    assert not (tmp_path / 'run').exists()


def test_killed_two_rank_run_resumes_with_ranks_in_agreement(tmp_path):
    ref_out, out = tmp_path / 'ref_dump', tmp_path / 'dump'
    ref_out.mkdir()
    out.mkdir()
    common = [*TINY, 'checkpoint_interval=5ba', 'max_duration=3ep']
    proc = _run(_launch(tmp_path, _script(ref_out, f'save_folder={tmp_path / "ref"}', *common), 29615, 'ref'))
    assert proc.returncode == 0, _logs(tmp_path)[-4000:]

    run = tmp_path / 'run'
    cmd = _launch(tmp_path, _script(out, f'save_folder={run}', *common), 29616, 'kill')
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (run / 'level_01' / 'checkpoints' / 'latest-rank0.pt').exists():
        assert launcher.poll() is None and time.time() < deadline, _logs(tmp_path)[-3000:]
        time.sleep(0.02)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both ranks, at once
    launcher.wait()
    assert not (run / 'level_01' / 'level.json').exists()

    proc = _run(_launch(tmp_path, _script(out, f'save_folder={run}', *common), 29617, 'resume'))
    assert proc.returncode == 0, _logs(tmp_path)[-4000:]
    _assert_ranks_agree(out, run, 3)
    rows = json.loads((run / 'summary.json').read_text())['levels']
    ref_rows = json.loads((tmp_path / 'ref' / 'summary.json').read_text())['levels']
    assert rows[1]['resumed_from_step'] and rows[1]['resumed_from_step'] > rows[1]['start_step']
    for key in ('level', 'weights_remaining', 'accuracy', 'loss', 'steps', 'cumulative_steps'):
        assert [r[key] for r in rows] == [r[key] for r in ref_rows], key
    for level in range(3):
        a = torch.load(run / f'level_{level:02d}' / 'mask.pt', weights_only=True)
        b = torch.load(tmp_path / 'ref' / f'level_{level:02d}' / 'mask.pt', weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)


def _convert(tmp_path, fmt):
    from composer_imp.data.convert import main as convert
    from test_recipes import _write_cifar
    if not (tmp_path / 'data').exists():
        _write_cifar(tmp_path / 'data', 10, test_size=21)  # odd: two ranks cannot split it evenly
    out = tmp_path / fmt
    assert convert(['--format', fmt, '--dataset', 'cifar10', '--data-root', str(tmp_path / 'data'), '--out', str(out)]) == 0
    return out


def _data_run(tmp_path, name, root, run, out, port, *extra):
    return _launch(tmp_path, [os.path.join(ROOT, 'tests', 'ddp_imp_script.py'), os.path.join(ROOT, 'yamls', 'cifar10_resnet20_imp.yaml'),
                              str(out), f'save_folder={run}', f'data.name={name}', f'data.data_root={root}', 'data.kind=cifar10',
                              'data.batch_size=10', 'data.eval_batch_size=10', 'data.num_workers=0', 'device=cpu',
                              'levels=1', 'algorithms.IMP.rewind=1ep', 'max_duration=2ep', 'eval_interval=2ep',
                              'progress_bar=false', 'checkpoint_interval=null', 'analysis.enabled=false', *extra], port, name)


@pytest.mark.parametrize('name', ['streaming', 'ffcv'])
def test_streaming_and_ffcv_loaders_give_each_rank_its_own_samples_and_evaluate_once(tmp_path, name):
    if name == 'ffcv' and os.environ.get('CI') != 'true':
        pytest.importorskip('ffcv', reason='ffcv is not installed')
    from composer_imp.data import raw_arrays
    root = _convert(tmp_path, 'mds' if name == 'streaming' else 'ffcv')
    out, run = tmp_path / 'dump', tmp_path / 'run'
    out.mkdir()
    proc = _run(_data_run(tmp_path, name, root, run, out, 29618 if name == 'streaming' else 29619))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + _logs(tmp_path)[-4000:]
    _assert_ranks_agree(out, run, 2)
    train_labels = sorted(raw_arrays('cifar10', str(tmp_path / 'data'))['train'][1].tolist())
    val_images = raw_arrays('cifar10', str(tmp_path / 'data'))['val'][0]
    for level in range(2):
        dumps = [torch.load(out / f'rank{r}_level{level}.pt', weights_only=True) for r in (0, 1)]
        epochs = set(dumps[0]['train_labels']) | set(dumps[1]['train_labels'])
        assert epochs == {1}, (level, epochs)  # every level trains from τ = 1ep (the pretraining had epoch 0)
        for epoch in epochs:  # per epoch, the two ranks' batches together are the training set, each sample once
            per_rank = [d['train_labels'].get(epoch, []) for d in dumps]
            # every epoch is whole (levels start at the rewind point, the start of epoch 1): 50 samples per rank
            assert len(per_rank[0]) == len(per_rank[1]) == 50, (level, epoch, [len(p) for p in per_rank])
            assert sorted(per_rank[0] + per_rank[1]) == train_labels, f'level {level} epoch {epoch}: ranks overlap'
        # evaluation covers every example, and the accuracy metric counts each exactly once across ranks
        assert len(set(dumps[0]['eval_images']) | set(dumps[1]['eval_images'])) == len(val_images) == 21
        counted = [d['eval_counted'] for d in dumps]
        assert len(counted[0]) == 1 and counted[0][0] + counted[1][0] == 21, counted

