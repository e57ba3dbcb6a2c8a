"""run.py from YAML: a full tiny IMP run in a real subprocess, and bad input stopped before any work."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

QUICK = os.path.join(ROOT, 'yamls', 'quickstart.yaml')
TINY = ['imp.levels=2', 'max_duration=2ep', 'eval_interval=1ep', 'progress_bar=false', 'model.width=4']


def _run(args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, **kw)


def test_tiny_imp_run_from_yaml_writes_every_output(tmp_path):
    out = tmp_path / 'run'
    proc = _run(['-f', QUICK, f'save_folder={out}', *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('[composer-imp] level') == 3, proc.stdout
    rows = json.loads((out / 'summary.json').read_text())['levels']
    assert [r['level'] for r in rows] == [0, 1, 2]
    for key in ('weights_remaining', 'ratio', 'accuracy', 'loss', 'steps', 'cumulative_steps', 'wall_seconds',
                'overhead_seconds'):
        assert all(r[key] is not None for r in rows), key
    assert rows[2]['weights_remaining'] == pytest.approx(0.64, abs=0.01)
    for level in range(3):
        mask = torch.load(out / f'level_{level:02d}' / 'mask.pt', weights_only=True)
        weights = torch.load(out / f'level_{level:02d}' / 'weights.pt', weights_only=True)
        assert set(mask) <= set(weights)
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(out / 'config.yaml')
    assert cfg.imp.levels == 2 and cfg.save_folder == str(out) and cfg.model.width == 4
    assert (out / 'rewind' / 'rewind.pt').is_file()


def test_bad_input_exits_nonzero_with_the_key_named(tmp_path):
    proc = _run(['-f', QUICK, f'save_folder={tmp_path}', 'imp.ratoi=0.3'])
    assert proc.returncode == 2
    assert "Unknown config key 'imp.ratoi'" in proc.stderr and "Did you mean 'imp.ratio'" in proc.stderr


@pytest.mark.parametrize('overrides, message', [
    (['imp.ratio=1.5'], 'imp.ratio must lie strictly between 0 and 1'),
    (['imp.ratio=0'], 'imp.ratio must lie strictly between 0 and 1'),
    (['imp.rewind=400ba'], "imp.rewind='400ba' is 400 batches, not before max_duration='15ep'"),
    (['imp.rewind=1ep', 'max_duration=1ep'], 'not before max_duration'),
    (['imp.rewind=soon'], 'imp.rewind'),
    (['imp.ignore=[module.fc.wieght]'], "Did you mean 'module.fc.weight'"),
    (['bogus_key=1'], "Unknown config key 'bogus_key'"),
    (['imp.levels=many'], "imp.levels"),
    (['model.name=resnet21'], "did you mean 'resnet20'"),
    (['model.depth=3'], 'model.depth is not an option'),
    (['optimizer.name=SDG'], "did you mean 'SGD'"),
    (['optimizer.momentun=0.9'], 'optimizer.momentun is not an argument of SGD'),
    (['data.batch_size=0'], 'data.batch_size=0'),
    (['max_duration=forever'], 'max_duration'),
    (['data.name=fashion_mnist', 'model.in_channels=1', 'data.data_root=/nonexistent/fmnist'],
     "data.data_root='/nonexistent/fmnist' lacks train-images-idx3-ubyte.gz"),
])
def test_bad_input_is_refused_before_any_work(overrides, message, tmp_path, capsys):
    import run
    keep = tmp_path / 'earlier.txt'
    keep.write_text('results of an earlier run')
    code = run.main(['-f', QUICK, f'save_folder={tmp_path}', *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert sorted(os.listdir(tmp_path)) == ['earlier.txt'] and keep.read_text() == 'results of an earlier run'


def test_missing_config_file(capsys):
    import run
    assert run.main(['-f', 'yamls/nope.yaml']) == 2
    assert "Config file 'yamls/nope.yaml' does not exist" in capsys.readouterr().err
