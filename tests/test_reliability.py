"""Reliability with real processes: SIGKILL mid-level and between levels, truncated artifacts, divergence."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from composer import Callback

from conftest import ROOT

pytestmark = pytest.mark.slow  # real run.py subprocesses, SIGKILL: `-m 'not slow'` skips them

QUICK = os.path.join(ROOT, 'yamls', 'quickstart.yaml')
# τ = 35 of 66 steps: the pretraining checkpoints at steps 10, 20, 30 and each level at 40, 50, 60, so a kill after
# the first checkpoint of either lands well before its end.
SMALL = ['levels=2', 'max_duration=3ep', 'eval_interval=3ep', 'model.width=4', 'checkpoint_interval=10ba',
         'progress_bar=false', 'algorithms.IMP.rewind=35ba']
COMPARED = ('level', 'weights_remaining', 'remaining', 'ratio', 'accuracy', 'loss', 'eval', 'steps', 'start_step',
            'cumulative_steps', 'epsilon', 'train_loss_mean')


def _cmd(folder):
    return [sys.executable, os.path.join(ROOT, 'run.py'), '-f', QUICK, f'save_folder={folder}', *SMALL]


def _finish(folder):
    proc = subprocess.run(_cmd(folder), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _kill_when(folder, ready):
    proc = subprocess.Popen(_cmd(folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 300
    while not ready(folder):
        assert proc.poll() is None, 'the run ended before the kill point'
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _state(folder):
    rows = json.loads((folder / 'summary.json').read_text())['levels']
    masks = [torch.load(folder / f'level_{r["level"]:02d}' / 'mask.pt', weights_only=True) for r in rows]
    return [{k: r.get(k) for k in COMPARED} for r in rows], masks


def _assert_same(a, b):
    rows_a, masks_a = a
    rows_b, masks_b = b
    assert rows_a == rows_b
    for ma, mb in zip(masks_a, masks_b):
        assert set(ma) == set(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.fixture(scope='module')
def reference_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('reference')
    _finish(folder)
    return folder


@pytest.fixture(scope='module')
def reference(reference_folder):
    return _state(reference_folder)


def _mid_level_2(folder):
    ckpts = folder / 'level_02' / 'checkpoints'
    return (ckpts / 'latest-rank0.pt').exists()  # a complete checkpoint autoresume can find


def test_sigkill_in_the_pretraining_then_mid_level_then_same_command_resumes(tmp_path, reference, reference_folder):
    _kill_when(tmp_path, lambda f: (f / 'rewind' / 'checkpoints' / 'latest-rank0.pt').exists())
    assert not (tmp_path / 'rewind' / 'rewind.pt').exists(), 'killed during the pretraining, before the rewind point'
    _kill_when(tmp_path, _mid_level_2)  # the same command: resumes the pretraining, then is killed again in level 2
    assert (tmp_path / 'rewind' / 'rewind.pt').exists() and not (tmp_path / 'level_02' / 'level.json').exists()
    _finish(tmp_path)
    state = _state(tmp_path)
    _assert_same(state, reference)
    rows = json.loads((tmp_path / 'summary.json').read_text())['levels']
    assert [r['level'] for r in rows] == [0, 1, 2], 'every level once'
    assert rows[0]['pretraining_resumed_from_step'] in (10, 20, 30), 'the pretraining resumed, not restarted'
    assert rows[0]['pretraining_steps'] == 35 and rows[0]['start_step'] == 35
    first = json.loads((reference_folder / 'summary.json').read_text())['levels'][0]
    assert first['pretraining_resumed_from_step'] is None
    assert rows[2]['resumed_from_step'] is not None and rows[2]['resumed_from_step'] > rows[2]['start_step'], \
        'level 2 must resume from its latest checkpoint, not retrain from the rewind point'
    w_tau = [torch.load(f / 'rewind' / 'rewind.pt', weights_only=False)['state']['model']
             for f in (reference_folder, tmp_path)]
    assert w_tau[0].keys() == w_tau[1].keys() and all(torch.equal(w_tau[0][k], w_tau[1][k]) for k in w_tau[0]), \
        'the resumed pretraining reaches the same w_τ'
    for done in ('rewind', 'level_02'):
        assert not (tmp_path / done / 'checkpoints').exists(), 'checkpoints are removed once what they were for is saved'


def test_sigkill_between_levels_then_resume(tmp_path, reference):
    _kill_when(tmp_path, lambda f: (f / 'level_01' / 'level.json').exists())
    _finish(tmp_path)
    _assert_same(_state(tmp_path), reference)


@pytest.mark.parametrize('artifact', ['level_02/weights.pt', 'level_01/mask.pt', 'rewind/rewind.pt'])
def test_truncated_artifact_is_detected_and_redone(artifact, tmp_path, reference, reference_folder):
    shutil.copytree(reference_folder, tmp_path, dirs_exist_ok=True)  # a finished run, moved
    path = tmp_path / artifact
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    proc = _finish(tmp_path)
    assert 'truncated or corrupted' in proc.stderr and artifact.split('/')[-1] in proc.stderr
    # Progress lines (logging, on stderr): the levels before the damaged one are kept; it and the levels after it,
    # whose masks came from its weights, are trained again (to the same result).
    assert proc.stderr.count('already done') == {'level_02': 2, 'level_01': 1, 'rewind': 0}[artifact.split('/')[0]], \
        proc.stderr
    _assert_same(_state(tmp_path), reference)


def test_changed_config_refused_then_overwrite_starts_over(tmp_path, reference_folder):
    shutil.copytree(reference_folder, tmp_path, dirs_exist_ok=True)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob('*') if p.is_file() and p.suffix != '.lock'}
    proc = subprocess.run(_cmd(tmp_path) + ['algorithms.IMP.ratio=0.5'], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'holds an IMP run made with a different config; changed keys:' in proc.stderr, proc.stderr
    assert 'algorithms.IMP.ratio (0.2 -> 0.5)' in proc.stderr, proc.stderr
    assert '--overwrite' in proc.stderr
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob('*')
            if p.is_file() and p.suffix != '.lock'} == before, \
        'a refused run changes nothing'
    proc = subprocess.run(_cmd(tmp_path) + ['algorithms.IMP.ratio=0.5', 'levels=1', '--overwrite'], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / 'summary.json').read_text())['levels']
    assert [r['ratio'] for r in rows] == [0.0, 0.5] and not (tmp_path / 'level_02').exists()
    mask = torch.load(tmp_path / 'level_01' / 'mask.pt', weights_only=True)  # a new level 1 of the new config
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert kept == pytest.approx(0.5, abs=1e-3)


def _make_trainer(loaders, max_duration, callbacks_at, **imp_kwargs):
    """A user's make_trainer: a fresh TinyNet, SGD and Trainer per level, loaders built once outside."""
    from composer import Trainer
    from composer.models import ComposerClassifier
    from composer_imp import IMP
    from conftest import TinyNet
    train, test = loaders

    def make_trainer(level, seed, imp_args):
        model = ComposerClassifier(TinyNet(), num_classes=10)
        return Trainer(model=model, optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                       train_dataloader=train, eval_dataloader=test, max_duration=max_duration, progress_bar=False,
                       device='cpu', algorithms=[IMP(**imp_kwargs)], callbacks=callbacks_at(level), seed=seed,
                       **imp_args)
    return make_trainer


def test_divergence_stops_the_level_and_keeps_earlier_levels(tmp_path, digits_loaders):
    from composer_imp import find_ticket
    from composer_imp.run_folder import RunFolder
    from composer_imp.faults import TrainingDiverged

    class Explode(Callback):  # after the rewind point is loaded (it restores the optimizer's LR), make it diverge
        def fit_start(self, state, logger):
            for group in state.optimizers[0].param_groups:
                group['lr'] = 1e30  # weights overflow to inf within a step or two

    make_trainer = _make_trainer(digits_loaders, '1ep', lambda level: [Explode()] if level == 2 else [], rewind='2ba')
    with pytest.raises(TrainingDiverged, match=r'level 02: the training loss became (nan|inf) at step \d+; the last finite loss was'):
        find_ticket(make_trainer, str(tmp_path), levels=3, seed=1)
    folder = RunFolder(str(tmp_path))
    assert folder.verify(0) and folder.verify(1)
    assert not folder.is_done(2)
    assert [r['level'] for r in folder.read_summary()] == [0, 1]


def test_divergence_from_the_cli_exits_nonzero(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), '-f', QUICK, f'save_folder={tmp_path}',
                           'optimizer.lr=1e30', 'levels=1', 'max_duration=2ep', 'progress_bar=false'],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 3 and 'composer-imp: training diverged: level 00: the training loss became' in proc.stderr, \
        proc.stderr[-2000:]
    assert not (tmp_path / 'level_00' / 'level.json').exists()


def test_level_collapsed_to_chance_is_flagged(tmp_path, digits_loaders, caplog):
    from composer_imp import find_ticket

    class Freeze(Callback):  # level 1 outputs constant logits and does not learn: one class for every input
        def fit_start(self, state, logger):
            for group in state.optimizers[0].param_groups:
                group['lr'] = 0.0
            with torch.no_grad():
                state.model.module.fc.weight.zero_()
                state.model.module.fc.bias.zero_()

    make_trainer = _make_trainer(digits_loaders, '2ep', lambda level: [Freeze()] if level == 1 else [], ratio=0.9,
                                 rewind='0ba')
    with caplog.at_level('WARNING', logger='composer_imp'):
        rows = find_ticket(make_trainer, str(tmp_path), levels=1, seed=1)
    assert rows[0]['collapsed'] is False and rows[0]['accuracy'] > 0.8
    assert rows[1]['collapsed'] is True and rows[1]['accuracy'] <= 0.15
    assert [r.getMessage() for r in caplog.records if 'is at chance level' in r.getMessage()] == \
        [f'level 01 accuracy {100 * rows[1]["accuracy"]:.2f}% is at chance level (10.0%)']
