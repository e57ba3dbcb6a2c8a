"""run.py from YAML: a full tiny IMP run in a real subprocess, and bad input stopped before any work."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

QUICK = os.path.join(ROOT, 'yamls', 'quickstart.yaml')
TINY = ['levels=2', 'max_duration=2ep', 'eval_interval=1ep', 'progress_bar=false', 'model.width=4']


def _run(args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, **kw)


@pytest.mark.slow
def test_tiny_imp_run_from_yaml_writes_every_output(tmp_path):
    out = tmp_path / 'run'
    proc = _run(['-f', QUICK, f'save_folder={out}', *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The progress lines go through logging to stderr, one per level, never to stdout.
    assert proc.stderr.count('[composer-imp] level') == 3, proc.stderr
    assert all(f'[composer-imp] level {l:02d}/02: ' in proc.stderr for l in range(3)), proc.stderr
    assert '[composer-imp]' not in proc.stdout, proc.stdout
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
    assert cfg.levels == 2 and cfg.save_folder == str(out) and cfg.model.width == 4
    # The recipe's algorithms section and the IMP component's own settings are both recorded.
    assert cfg.algorithms.IMP.ratio == 0.2 and cfg.algorithms.IMP.rewind == '23ba'
    assert cfg.algorithms.IMP.scope == 'global' and cfg.algorithms.IMP.data_order == 'new' and 'imp' not in cfg
    assert 'levels' not in cfg.algorithms.IMP and list(cfg.algorithms) == ['IMP'], 'the recipe\'s shape'
    assert (out / 'rewind' / 'rewind.pt').is_file()


@pytest.mark.slow
def test_bad_input_exits_nonzero_with_the_key_named(tmp_path):
    proc = _run(['-f', QUICK, f'save_folder={tmp_path}', 'algorithms.IMP.ratoi=0.3'])
    assert proc.returncode == 2
    assert "algorithms.IMP.ratoi is not an argument of IMP" in proc.stderr, proc.stderr
    assert "did you mean 'algorithms.IMP.ratio'" in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('overrides, messages', [
    (['algorithms.IMP.ratio=1.5'], ('algorithms.IMP: could not build IMP(', 'IMP ratio must lie strictly between 0 and 1',
                                    'got 1.5')),
    (['algorithms.IMP.ratio=0'], ('algorithms.IMP: could not build IMP(', 'IMP ratio must lie strictly between 0 and 1',
                                  'got 0.')),
    (['algorithms.IMP.rewind=400ba'], ("IMP rewind='400ba' (400 batches) is not before max_duration=15ep",
                                       'choose an earlier rewind step')),
    (['algorithms.IMP.rewind=1ep', 'max_duration=1ep'], ("IMP rewind='1ep'", 'not before max_duration')),
    (['algorithms.IMP.rewind=soon'], ('algorithms.IMP: could not build IMP(', "rewind='soon' is not a Composer time",
                                      '"2000ba" or "1ep"')),
    (['algorithms.IMP.scope=local'], ('algorithms.IMP: could not build IMP(', "scope must be 'global' or 'layerwise'")),
    (['algorithms.IMP.ignore=module.fc'], ("IMP ignore must be a list of names", "(write ['module.fc'])")),
    # A typo in ignore is found on the model as the Trainer holds it (after surgery), still before anything is written.
    (['algorithms.IMP.ignore=[module.fc.wieght]'], ("entry 'module.fc.wieght' matches no parameter or module",
                                                     "Did you mean 'module.fc.weight'")),
    (['algorithms.AdaptiveIMP.ratio=0.2'], ('Enable exactly one of IMP, AdaptiveIMP under algorithms',
                                            "this config has ['IMP', 'AdaptiveIMP']")),
    (['bogus_key=1'], ("Unknown config key 'bogus_key'",)),
    (['levles=3'], ("Unknown config key 'levles'", "Did you mean 'levels'?")),
    (['levels=many'], ("Bad value for config key 'levels'",)),
    (['checkpoint_interval=soon'], ("checkpoint_interval='soon' is not a Composer time string",)),
    (['model.name=resnet21'], ("did you mean 'resnet20'",)),
    (['model.depth=3'], ('model.depth is not an option',)),
    (['optimizer.name=SDG'], ("did you mean 'SGD'",)),
    (['optimizer.momentun=0.9'], ('optimizer.momentun is not an argument of SGD',)),
    (['data.batch_size=0'], ('data.batch_size=0',)),
    (['max_duration=forever'], ('max_duration',)),
    (['data.name=fashion_mnist', 'model.in_channels=1', 'data.data_root=/nonexistent/fmnist'],
     ("data.data_root='/nonexistent/fmnist' lacks train-images-idx3-ubyte.gz",)),
], ids=lambda v: ' '.join(v) if isinstance(v, list) else None)
def test_bad_input_is_refused_before_any_work(overrides, messages, tmp_path, capsys):
    import run
    keep = tmp_path / 'earlier.txt'
    keep.write_text('results of an earlier run')
    code = run.main(['-f', QUICK, f'save_folder={tmp_path}', 'progress_bar=false', *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith('composer-imp: error: ') or '\ncomposer-imp: error: ' in err, err
    for message in messages:
        assert message in err, err
    assert sorted(os.listdir(tmp_path)) == ['earlier.txt'] and keep.read_text() == 'results of an earlier run'


def test_missing_config_file(capsys):
    import run
    assert run.main(['-f', 'yamls/nope.yaml']) == 2
    assert "Config file 'yamls/nope.yaml' does not exist" in capsys.readouterr().err
