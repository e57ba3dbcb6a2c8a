"""Nothing lost, nothing silently wrong: safe overwrite, one process per run folder, verified analysis inputs, every
window resumable, bad input refused by name before any training (docs/reliability.md's table)."""

import hashlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from composer import Callback
from composer.models import ComposerClassifier
from torch import nn

from composer_imp import IMP, find_ticket
from composer_imp.analysis import LandscapeSettings, analyze_run
from composer_imp.criteria import epsilon, in_lcs_set, is_connected, is_matching
from composer_imp.folder_lock import FolderBusy
from composer_imp.run_folder import CorruptArtifact, RunFolder, atomic_torch_save

from conftest import ROOT, TinyNet

BLOCKING = os.path.join(ROOT, 'tests', 'blocking_run.py')


def _digests(folder):
    """SHA-256 of every file under ``folder`` (relative path -> digest), lock files aside."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            if not name.endswith('.lock'):
                path = os.path.join(base, name)
                out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    return out


@pytest.fixture
def finished(tmp_path, make_trainer_factory):
    """A finished run (levels 0..2) and the recipe that made it."""
    make_trainer = make_trainer_factory()
    folder = tmp_path / 'run'
    rows = find_ticket(make_trainer, str(folder), levels=2)
    return folder, make_trainer, rows


# ---- overwrite ---------------------------------------------------------------------------------------------------

def test_an_overwrite_that_fails_keeps_the_old_run(finished, make_trainer_factory):
    folder, make_trainer, _ = finished
    before = _digests(folder)
    with pytest.raises(ValueError, match="metric='bogus' is not an eval metric"):
        find_ticket(make_trainer, str(folder), levels=2, overwrite=True, metric='bogus')
    assert _digests(folder) == before

    def broken(level, seed, imp_args):
        raise RuntimeError('the user script fails')
    with pytest.raises(RuntimeError, match='the user script fails'):
        find_ticket(broken, str(folder), levels=2, overwrite=True)
    assert _digests(folder) == before and not os.path.exists(RunFolder(str(folder)).replaced)
    # ... and the same command without overwrite still finds every level done.
    trained = len(make_trainer.records)
    find_ticket(make_trainer, str(folder), levels=2)
    assert all(r.start is None for r in make_trainer.records[trained:])


def test_overwrite_replaces_the_run_once_the_new_one_has_started_and_keeps_your_files(finished, make_trainer_factory):
    folder, _, old = finished
    (folder / 'notes.txt').write_text('mine')
    new = find_ticket(make_trainer_factory(imp=lambda: IMP(ratio=0.5, rewind='5ba')), str(folder), levels=1,
                      overwrite=True)
    assert [r['ratio'] for r in new] == [0.0, 0.5] and not (folder / 'level_02').exists()
    assert json.loads((folder / 'summary.json').read_text())['levels'] == new
    assert (folder / 'notes.txt').read_text() == 'mine' and not os.path.exists(RunFolder(str(folder)).replaced)


def test_overwrite_refuses_a_folder_composer_imp_did_not_make(tmp_path, make_trainer_factory):
    folder = tmp_path / 'mine'
    (folder / 'analysis').mkdir(parents=True)
    (folder / 'analysis' / 'important.txt').write_text('keep')
    (folder / 'level_plan').mkdir()
    (folder / 'level_plan' / 'ideas.txt').write_text('keep')
    before = _digests(folder)
    make_trainer = make_trainer_factory()
    with pytest.raises(ValueError, match=r'was not made by composer-imp .* holds analysis, which a run would write '
                                         r'\(and an overwrite deletes only runs it made\)'):
        find_ticket(make_trainer, str(folder), levels=1, overwrite=True)
    assert _digests(folder) == before and not make_trainer.records, 'refused before any Trainer was built'
    assert sorted(os.listdir(folder)) == ['analysis', 'level_plan']
    # Nor does a first run there (it would make the folder its own, and a later overwrite delete analysis/).
    with pytest.raises(ValueError, match=r'was not made by composer-imp .* holds analysis, which a run would write'):
        find_ticket(make_trainer, str(folder), levels=1)
    assert _digests(folder) == before and sorted(os.listdir(folder)) == ['analysis', 'level_plan']


@pytest.mark.parametrize('state', ['moving', 'moved', 'restoring'])
def test_an_overwrite_interrupted_at_any_step_is_undone_by_the_next_run(finished, state):
    """The state a kill (or a failed rename) leaves part way through setting a run aside, or putting it back."""
    folder, make_trainer, _ = finished
    before = _digests(folder)
    run = RunFolder(str(folder))
    entries = run.layout_entries()
    os.makedirs(run.replaced)
    (folder / '.composer-imp-replaced' / 'journal.json').write_text(json.dumps({'entries': entries, 'state': state}))
    moved = entries[:2] if state == 'moving' else entries[1:] if state == 'restoring' else entries
    for name in moved:
        os.rename(folder / name, folder / '.composer-imp-replaced' / name)
    if state != 'moving':  # the new run had begun writing in the root
        (folder / 'summary.json').write_text('{"levels": []}') if 'summary.json' in moved else None
        (folder / 'level_07').mkdir()
    trained = len(make_trainer.records)
    find_ticket(make_trainer, str(folder), levels=2)
    assert _digests(folder) == before and not os.path.exists(run.replaced)
    assert all(r.start is None for r in make_trainer.records[trained:]), 'nothing retrained'


# ---- resumable windows and refusals before training --------------------------------------------------------------

class _SeesConfig(Callback):
    """When a fit starts: does config.yaml exist, and at which step?"""

    def __init__(self, folder, seen):
        self.folder, self.seen = folder, seen

    def fit_start(self, state, logger):
        self.seen.append(((self.folder / 'config.yaml').is_file(), int(state.timestamp.batch)))


def test_config_is_written_before_anything_trains_and_a_refused_level_resumes(tmp_path, make_trainer_factory):
    folder, seen = tmp_path / 'run', []
    recipe = make_trainer_factory(extra=lambda level: {'callbacks': [_SeesConfig(folder, seen)]})
    find_ticket(recipe, str(folder), levels=1)
    # At the pretraining's first step (step 0, before the rewind point at step 5 exists) config.yaml is there: no
    # kill can leave a rewind point without the config that resumes it.
    assert seen[0] == (True, 0) and all(exists for exists, _ in seen)

    def forgets_imp_args(level, seed, imp_args):
        return recipe(level, seed, {})
    other = tmp_path / 'other'
    with pytest.raises(ValueError, match=r'Level 0: the Trainer make_trainer returned was not given imp_args'):
        find_ticket(forgets_imp_args, str(other), levels=1)
    assert not other.exists(), 'refused at the pretraining: nothing written'
    assert [r['level'] for r in find_ticket(recipe, str(other), levels=1)] == [0, 1]

    # Refused at level 0, after the pretraining wrote the rewind point: the fixed script resumes, no manual delete.
    def forgets_them_from_the_rewind_point(level, seed, imp_args):
        return recipe(level, seed, {} if 'load_path' in imp_args else imp_args)
    third = tmp_path / 'third'
    with pytest.raises(ValueError, match=r'Level 0: the Trainer make_trainer returned was not given imp_args'):
        find_ticket(forgets_them_from_the_rewind_point, str(third), levels=1)
    assert (third / 'rewind' / 'rewind.pt').is_file() and (third / 'config.yaml').is_file()
    fitted = len(recipe.records)
    assert [r['level'] for r in find_ticket(recipe, str(third), levels=1)] == [0, 1]
    assert [r.level for r in recipe.records[fitted:] if r.start is not None] == [0, 1], 'the pretraining is reused'


def test_unusable_save_folders_are_refused_before_training(tmp_path, make_trainer_factory):
    make_trainer = make_trainer_factory()
    afile = tmp_path / 'afile'
    afile.write_text('x')
    for folder, reason in ((afile, 'File exists|Not a directory'), (tmp_path / ('x' * 300), 'File name too long')):
        with pytest.raises(ValueError, match=rf'The run folder .* cannot be used: ({reason})'):
            find_ticket(make_trainer, str(folder), levels=1)
    assert not make_trainer.records and afile.read_text() == 'x'


def test_bad_recipes_are_refused_before_anything_is_built(tmp_path, capsys):
    import run
    listed = tmp_path / 'list.yaml'
    listed.write_text('- save_folder: x\n- levels: 2\n')
    out = tmp_path / 'out'
    assert run.main(['-f', str(listed)]) == 2
    assert 'must hold a mapping of recipe keys' in capsys.readouterr().err
    quick = os.path.join(ROOT, 'yamls', 'quickstart.yaml')
    assert run.main(['-f', quick, f'save_folder={out}', 'levels=0', 'analysis.enabled=true']) == 2
    assert 'analysis.enabled needs at least one pruned level (levels >= 1)' in capsys.readouterr().err
    assert not out.exists()


def test_a_recipe_that_changes_between_levels_is_refused_by_name(tmp_path, make_trainer_factory):
    ratios = make_trainer_factory(imp=lambda: IMP(ratio=0.2, rewind='5ba'))
    later = make_trainer_factory(imp=lambda: IMP(ratio=0.5, rewind='5ba'))
    with pytest.raises(ValueError, match=r"Level 1: make_trainer built IMP with other settings than the run's: "
                                         r'ratio \(0.2 -> 0.5\)'):
        find_ticket(lambda level, seed, args: (ratios if level == 0 else later)(level, seed, args),
                    str(tmp_path / 'a'), levels=1)
    assert all(r.start is None for r in later.records), 'level 1 did not train'

    class Wider(TinyNet):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.Linear(12 * 16, 10)
    small, wide = make_trainer_factory(), make_trainer_factory(model=Wider)
    with pytest.raises(ValueError, match=r'Level 1: the model make_trainer built does not fit the run\'s checkpoint '
                                         r'.*rewind.pt.*size mismatch'):
        find_ticket(lambda level, seed, args: (small if level == 0 else wide)(level, seed, args),
                    str(tmp_path / 'b'), levels=1)


def test_fewer_levels_keep_the_later_ones_in_the_summary(finished, make_trainer_factory, caplog):
    folder, make_trainer, rows = finished
    caplog.set_level('INFO', logger='composer_imp')
    again = find_ticket(make_trainer, str(folder), levels=1)
    assert again == rows and json.loads((folder / 'summary.json').read_text())['levels'] == rows
    assert any('levels 02-02 were trained by an earlier run' in r.getMessage() for r in caplog.records)


def test_failed_writes_leave_no_temporary_and_killed_ones_are_cleaned(finished, make_trainer_factory, tmp_path):
    target = tmp_path / 'x.pt'
    with pytest.raises(Exception):
        atomic_torch_save({'f': lambda: 0}, str(target))  # fails inside torch.save, as a full disk would
    assert not [p for p in os.listdir(tmp_path) if '.tmp' in p] and not target.exists()
    folder, make_trainer, _ = finished
    stale = folder / 'level_01' / 'weights.pt.tmp4242'  # what a SIGKILL inside a write leaves
    stale.write_bytes(b'half')
    find_ticket(make_trainer, str(folder), levels=2)
    assert not stale.exists()


# ---- the analysis reads only verified files ----------------------------------------------------------------------

def _analyse(folder, loaders):
    model = ComposerClassifier(TinyNet(), num_classes=10)
    return analyze_run(str(folder), model, loaders[1], settings=LandscapeSettings(betas=[0.0, 0.5, 1.0],
                                                                                  pairwise=False), overwrite=True)


def test_controls_are_reused_only_while_what_they_were_made_from_is_unchanged(finished):
    from composer_imp import run_controls
    folder, make_trainer, _ = finished
    first = run_controls(make_trainer, str(folder), levels=[1], kinds=['random_mask'])[0]
    assert first['made_from']['mask.pt'] == json.loads((folder / 'level_01' / 'level.json').read_text())['manifest'][
        'mask.pt']
    trained = len(make_trainer.records)
    assert run_controls(make_trainer, str(folder), levels=[1], kinds=['random_mask'])[0] == first
    assert all(r.start is None for r in make_trainer.records[trained:]), 'reused'
    stale = dict(first, made_from={**first['made_from'], 'mask.pt': '0' * 64})  # made from another mask
    (folder / 'level_01' / 'controls' / 'random_mask.json').write_text(json.dumps(stale))
    again = run_controls(make_trainer, str(folder), levels=[1], kinds=['random_mask'])[0]
    assert again['made_from'] == first['made_from'] and any(r.start is not None for r in make_trainer.records[trained:])


def test_the_analysis_refuses_files_that_fail_their_checksum(finished, digits_loaders):
    folder, _, _ = finished
    intact = _analyse(folder, digits_loaders)
    weights = folder / 'level_02' / 'weights.pt'
    data = bytearray(weights.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    original = weights.read_bytes()
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact, match=r'level_02/weights.pt does not match the checksum in .*level_02/level.json'):
        _analyse(folder, digits_loaders)
    weights.write_bytes(original[:1000])  # truncated
    with pytest.raises(CorruptArtifact, match=r'level_02/weights.pt does not match'):
        _analyse(folder, digits_loaders)
    weights.write_bytes(original)
    row = folder / 'level_01' / 'level.json'
    edited = json.loads(row.read_text())
    edited['accuracy'] = 0.5
    row.write_text(json.dumps(edited))
    with pytest.raises(CorruptArtifact, match=r'level_01: level.json \(edited\)'):
        _analyse(folder, digits_loaders)
    edited['accuracy'] = json.loads((folder / 'summary.json').read_text())['levels'][1]['accuracy']
    row.write_text(json.dumps(edited))
    assert _analyse(folder, digits_loaders)['levels'] == intact['levels']
    mask = folder / 'level_01' / 'mask.pt'
    kept = mask.read_bytes()
    mask.unlink()  # level 1's files incomplete while level 2 exists: refused, not an analysis of level 0 alone
    with pytest.raises(CorruptArtifact, match=r'level_01 lacks mask.pt while level\(s\) \[2\] after it have finished'):
        _analyse(folder, digits_loaders)
    mask.write_bytes(kept)


@pytest.mark.slow
def test_analyze_command_exits_2_naming_the_file(finished, capsys):
    """The command a user runs (once as a subprocess, then its main() in-process): corrupted weights, a garbage
    config.yaml, --planes -4: exit 2, named, nothing rewritten."""
    folder, _, _ = finished
    # A YAML run folder is what the command rebuilds a model from: make one with the quickstart recipe.
    run = folder.parent / 'yaml_run'
    import run as run_py
    assert run_py.main(['-f', os.path.join(ROOT, 'yamls', 'quickstart.yaml'), f'save_folder={run}', 'levels=1',
                        'max_duration=2ep', 'eval_interval=2ep', 'model.width=4', 'progress_bar=false',
                        'algorithms.IMP.rewind=5ba', 'analysis.enabled=true', 'analysis.pairwise=false']) == 0
    analysis = (run / 'analysis' / 'analysis.json').read_bytes()
    analyze = [sys.executable, '-m', 'composer_imp.analyze', str(run)]  # once as a real command, the rest in-process
    from composer_imp import analyze as command
    assert command.main([str(run), '--planes', '-4']) == 2
    assert 'planes=-4 must be 0' in capsys.readouterr().err
    weights = run / 'level_01' / 'weights.pt'
    weights.write_bytes(weights.read_bytes()[:-64] + bytes(64))
    proc = subprocess.run(analyze + ['--overwrite'], capture_output=True, text=True, cwd=ROOT)  # any settings
    assert proc.returncode == 2 and f'{run / "level_01" / "weights.pt"} does not match the checksum' in proc.stderr, \
        proc.stderr[-2000:]
    (run / 'config.yaml').write_text('{model: [unclosed')
    assert command.main([str(run)]) == 2
    assert f'{run / "config.yaml"} is not a readable run config' in capsys.readouterr().err
    assert (run / 'analysis' / 'analysis.json').read_bytes() == analysis


# ---- one process per run folder ----------------------------------------------------------------------------------

def _start_blocked(folder, ready, *args):
    proc = subprocess.Popen([sys.executable, BLOCKING, str(folder), '--ready', str(ready), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_two_runs_on_one_folder_never_both_run_and_a_killed_holder_frees_it(tmp_path, make_trainer_factory):
    """The same run started twice (no config difference to refuse it): the second is refused while the first lives;
    SIGKILL the first, and the next run takes the folder over and finishes it. (blocking_run.py's recipe is
    make_trainer_factory's default one.)"""
    folder = tmp_path / 'run'
    first = _start_blocked(folder, tmp_path / 'ready', '--block-at', '1')  # holds the lock, level 0 done
    make_trainer = make_trainer_factory()
    with pytest.raises(FolderBusy, match=rf'is in use by process {first.pid} on .*\(training, started .*blocking_run'):
        find_ticket(make_trainer, str(folder), levels=2)
    assert not make_trainer.records, 'refused before any Trainer was built'
    os.killpg(first.pid, signal.SIGKILL)  # the kernel drops the lock with the process
    first.wait()
    rows = find_ticket(make_trainer, str(folder), levels=2)
    assert [r['level'] for r in rows] == [0, 1, 2]
    assert [r.level for r in make_trainer.records if r.start is not None] == [1, 2], 'level 0 kept, 1 and 2 trained'


@pytest.mark.slow
def test_an_overwrite_killed_before_its_run_started_gives_the_old_run_back(tmp_path, make_trainer_factory):
    folder = tmp_path / 'run'
    make_trainer = make_trainer_factory()  # blocking_run.py's recipe
    find_ticket(make_trainer, str(folder), levels=1)
    before = _digests(folder)
    proc = _start_blocked(folder, tmp_path / 'ready', '--levels', '1', '--ratio', '0.5', '--overwrite',
                          '--block-at', '-1')
    os.killpg(proc.pid, signal.SIGKILL)  # the old run is set aside, the new one has not started
    proc.wait()
    assert os.path.isdir(RunFolder(str(folder)).replaced) and not (folder / 'config.yaml').exists()
    trained = len(make_trainer.records)
    find_ticket(make_trainer, str(folder), levels=1)
    assert _digests(folder) == before, 'the old run is back, untouched'
    assert all(r.start is None for r in make_trainer.records[trained:]), 'nothing retrained'


# ---- one home for each concept, no side effects ------------------------------------------------------------------

def test_criteria_are_the_papers():
    assert is_matching(0.11, 0.10, 0.01) and not is_matching(0.1101, 0.10, 0.01)
    assert is_connected(0.01, 0.01) and not is_connected(0.0101, 0.01)
    assert in_lcs_set([0.10, 0.12], 0.01, reference=0.115) and not in_lcs_set([0.10, 0.12], 0.01)
    five = epsilon([0.10, 0.11, 0.12, 0.13, 0.14])  # s = 0.0158; the textbook chi-square factors for n = 5
    assert five['value'] == pytest.approx(0.0158114, rel=1e-5)
    assert five['low'] / five['value'] == pytest.approx(0.5991, abs=1e-3)
    assert five['high'] / five['value'] == pytest.approx(2.8735, abs=1e-3)
    with pytest.raises(ValueError, match='needs at least 2'):
        epsilon([0.1])


def test_importing_the_package_changes_nothing_in_the_users_process():
    code = ('import matplotlib; matplotlib.use("pdf"); import logging; handlers = len(logging.getLogger().handlers); '
            'import composer_imp, composer_imp.plots, composer_imp.analysis; import matplotlib.pyplot as plt; '
            'assert matplotlib.get_backend() == "pdf", matplotlib.get_backend(); '
            'assert len(logging.getLogger().handlers) == handlers; print("ok")')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == 'ok', proc.stderr[-2000:]


def test_one_version_number():
    import composer_imp
    assert importlib.metadata.version('composer-imp') == composer_imp.__version__
    assert 'version = "' not in open(os.path.join(ROOT, 'pyproject.toml')).read()


def test_recorded_config_has_the_shape_of_the_recipe(tmp_path):
    """config.yaml is a recipe run.py reads back: the same keys, IMP under algorithms with every setting."""
    from composer_imp.config import config_from_dict
    from composer_imp.recipes import run_config
    recipe = config_from_dict({'save_folder': str(tmp_path / 'r'), 'max_duration': '2ep', 'eval_interval': '2ep',
                               'progress_bar': False, 'device': 'cpu', 'model': {'name': 'small_cnn', 'width': 4},
                               'data': {'name': 'digits', 'batch_size': 64},
                               'optimizer': {'name': 'SGD', 'lr': 0.05},
                               'algorithms': {'BlurPool': {}, 'IMP': {'rewind': '5ba'}}, 'levels': 0})
    run_config(recipe)
    recorded = RunFolder(str(tmp_path / 'r')).read_config()
    assert list(recorded['algorithms']) == ['BlurPool', 'IMP'] and recorded['algorithms']['IMP']['ratio'] == 0.2
    again = config_from_dict(recorded)  # the recorded file is a valid recipe
    assert dict(again.algorithms.IMP)['rewind'] == '5ba' and again.levels == 0
    assert torch.load(RunFolder(str(tmp_path / 'r')).mask(0), weights_only=True)


def test_a_busy_folder_is_named(tmp_path, make_trainer_factory):
    folder = RunFolder(str(tmp_path / 'run'))
    other = subprocess.Popen([sys.executable, '-c', (
        'import sys, time; from composer_imp.folder_lock import FolderLock; '
        f'FolderLock({os.path.join(folder.root, ".composer-imp.lock")!r}, "training").acquire(); '
        'print("held", flush=True); time.sleep(60)')], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert other.stdout.readline().strip() == 'held'
        make_trainer = make_trainer_factory()
        with pytest.raises(FolderBusy, match=rf'is in use by process {other.pid} on .*\(training, started'):
            find_ticket(make_trainer, folder.root, levels=1)
        assert not make_trainer.records
    finally:
        other.kill()
        other.wait()
