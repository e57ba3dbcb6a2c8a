"""composer-imp 0.1 inputs under the component API: the deprecated ``imp:`` block of a recipe still runs (translated,
with a warning), and a run folder written in the 0.1 format is refused for resume but can still be analysed."""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT

pytestmark = pytest.mark.slow  # real run.py subprocesses, SIGKILL: `-m 'not slow'` skips them

QUICK = os.path.join(ROOT, 'yamls', 'quickstart.yaml')
TINY = {'max_duration': '2ep', 'eval_interval': '2ep', 'progress_bar': False, 'analysis': {'enabled': False}}


def _legacy_yaml(path, save_folder):
    """yamls/quickstart.yaml's settings, IMP given the composer-imp 0.1 way: an imp: block holding levels."""
    cfg = OmegaConf.to_container(OmegaConf.load(QUICK))
    assert set(cfg['algorithms']) == {'IMP'}, 'the quickstart enables IMP under algorithms'
    del cfg['algorithms'], cfg['levels']
    cfg.update(TINY, save_folder=str(save_folder), model={**cfg['model'], 'width': 4},
               imp={'levels': 1, 'ratio': 0.2, 'rewind': '23ba'})
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return path


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def _files(folder):
    """Every file's bytes; lock files aside (they record the latest holder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
            if p.is_file() and p.suffix != '.lock'}


@pytest.fixture(scope='module')
def legacy_run(tmp_path_factory):
    """A real run.py run of a recipe with the deprecated imp: block: (recipe, folder, process)."""
    root = tmp_path_factory.mktemp('legacy')
    recipe = _legacy_yaml(root / 'legacy.yaml', root / 'run')
    return recipe, root / 'run', _run('-f', str(recipe))


def test_a_recipe_with_the_deprecated_imp_block_still_runs_and_warns(legacy_run):
    recipe, folder, proc = legacy_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("[composer-imp] The imp: block is deprecated: enable IMP under algorithms "
            "(algorithms.IMP: {'ratio': 0.2, 'rewind': '23ba'}) and set levels, target_sparsity and "
            "checkpoint_interval at the top level.") in proc.stderr, proc.stderr[-3000:]
    rows = json.loads((folder / 'summary.json').read_text())['levels']
    assert [r['level'] for r in rows] == [0, 1] and [r['ratio'] for r in rows] == [0.0, 0.2]
    assert rows[1]['start_step'] == 23 and rows[1]['weights_remaining'] == pytest.approx(0.8, abs=1e-3)
    mask = torch.load(folder / 'level_01' / 'mask.pt', weights_only=True)
    weights = torch.load(folder / 'level_01' / 'weights.pt', weights_only=True)
    assert all(torch.all(weights[k][~mask[k]] == 0) for k in mask)
    # Recorded in the new form: the translated settings, so the run folder is a current one.
    cfg = OmegaConf.to_container(OmegaConf.load(folder / 'config.yaml'))
    assert cfg['levels'] == 1 and 'imp' not in cfg
    assert cfg['algorithms'] == {'IMP': {'ratio': 0.2, 'rewind': '23ba', 'ignore': [], 'scope': 'global',
                                         'rewind_optimizer': False, 'data_order': 'new'}}


def test_the_same_deprecated_recipe_resumes_its_run(legacy_run):
    recipe, folder, proc = legacy_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = _files(folder)
    again = _run('-f', str(recipe))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count('already done') == 2, again.stderr[-3000:]
    artifacts = lambda files: {k: v for k, v in files.items() if k.startswith(('level_', 'rewind')) or k == 'config.yaml'}
    assert artifacts(_files(folder)) == artifacts(before), 'nothing retrained, the same config'
    assert [r['level'] for r in json.loads((folder / 'summary.json').read_text())['levels']] == [0, 1]


@pytest.mark.parametrize('overrides, messages', [
    (['imp.ratoi=0.3'], ("Unknown config key 'imp.ratoi'.", "Did you mean 'imp.ratio'?")),
    (['algorithms.IMP.ratio=0.3'], ('The config enables IMP twice: under algorithms and in the deprecated imp: block.',
                                    'move the imp: settings there')),
    (['imp.ratio=1.5'], ('algorithms.IMP: could not build IMP(', 'IMP ratio must lie strictly between 0 and 1')),
])
def test_bad_deprecated_imp_block_is_refused_before_any_work(overrides, messages, tmp_path, capsys):
    import run
    recipe = _legacy_yaml(tmp_path / 'legacy.yaml', tmp_path / 'run')
    assert run.main(['-f', str(recipe), *overrides]) == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, err
    assert sorted(os.listdir(tmp_path)) == ['legacy.yaml']


def test_deprecated_imp_block_translates_adaptive_controls_and_loop_keys(caplog):
    from composer_imp.config import config_from_dict
    base = OmegaConf.to_container(OmegaConf.load(QUICK))
    del base['algorithms'], base['levels']
    with caplog.at_level(logging.WARNING, logger='composer_imp'):
        cfg = config_from_dict({**base, 'imp': {
            'levels': 4, 'ratio': 0.1, 'rewind': '1ep', 'ignore': ['module.fc'], 'target_sparsity': 0.9,
            'checkpoint_interval': '5ba', 'adaptive': {'enabled': True, 'subsample': 256, 'baseline': 'eval'},
            'controls': ['random_mask'], 'control_levels': [2]}})
    assert cfg.get('imp') is None and cfg.levels == 4 and cfg.target_sparsity == 0.9 and cfg.checkpoint_interval == '5ba'
    assert OmegaConf.to_container(cfg.algorithms) == {'AdaptiveIMP': {
        'ratio': 0.1, 'rewind': '1ep', 'ignore': ['module.fc'], 'subsample': 256, 'baseline': 'eval'}}
    assert list(cfg.controls.kinds) == ['random_mask'] and list(cfg.controls.levels) == [2]
    assert any('The imp: block is deprecated' in m and 'algorithms.AdaptiveIMP' in m for m in caplog.messages)


def _to_old_format(folder):
    """Rewrite a run folder's config.yaml as composer-imp 0.1 wrote it: the IMP settings and the loop's keys (levels,
    target_sparsity, checkpoint_interval, controls) in one imp: block, no top-level loop keys, no algorithms.IMP."""
    cfg = OmegaConf.to_container(OmegaConf.load(folder / 'config.yaml'))
    algorithms = cfg['algorithms']
    component = algorithms.pop('IMP')
    controls = cfg.pop('controls')
    cfg.pop('metric')
    cfg['imp'] = {
        'levels': cfg.pop('levels'), 'ratio': component['ratio'], 'rewind': component['rewind'],
        'ignore': component['ignore'], 'scope': component['scope'], 'checkpoint_interval': cfg.pop('checkpoint_interval'),
        'target_sparsity': cfg.pop('target_sparsity'),
        'adaptive': {'enabled': False, 'ratios': [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                     'path_points': [0.25, 0.5, 0.75, 1.0], 'subsample': 1024, 'batch_size': 512, 'baseline': 'train',
                     'recalibrate_bn': True, 'reference': 'dense', 'land_on_target': True},
        'controls': list(controls['kinds']), 'control_levels': list(controls['levels']),
    }
    (folder / 'config.yaml').write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    text = (folder / 'config.yaml').read_text()
    assert 'levels: 1' in text and '\nlevels:' not in text and 'IMP' not in text
    return cfg


@pytest.fixture
def old_folder(legacy_run, tmp_path):
    recipe, folder, proc = legacy_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    old = tmp_path / 'old_run'
    shutil.copytree(folder, old)
    _to_old_format(old)
    return old


@pytest.mark.parametrize('recipe', ['deprecated imp: block', 'algorithms.IMP'])
def test_an_old_format_run_folder_is_refused_for_resume_and_nothing_is_lost(recipe, old_folder, legacy_run, capsys):
    import run
    args = (['-f', str(legacy_run[0])] if recipe == 'deprecated imp: block' else
            ['-f', QUICK, 'levels=1', 'max_duration=2ep', 'eval_interval=2ep', 'model.width=4', 'progress_bar=false',
             'analysis.enabled=false'])
    before = _files(old_folder)
    assert run.main([*args, f'save_folder={old_folder}']) == 2
    err = capsys.readouterr().err
    assert 'composer-imp: error: ' in err and str(old_folder) in err, err
    assert 'was made by composer-imp before IMP/AdaptiveIMP became Composer components' in err, err
    assert 'cannot be resumed by this version' in err and 'python -m composer_imp.analyze' in err, err
    assert 'Use another save_folder, or --overwrite to start over.' in err, err
    assert _files(old_folder) == before, 'the refused run changed nothing'


def test_an_old_format_run_folder_can_still_be_analysed(old_folder):
    before = _files(old_folder)
    proc = subprocess.run([sys.executable, '-m', 'composer_imp.analyze', str(old_folder), '--betas', '0,0.5,1'],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((old_folder / 'analysis' / 'analysis.json').read_text())
    summary = json.loads((old_folder / 'summary.json').read_text())['levels']
    assert [r['level'] for r in result['levels']] == [0, 1]
    for r, s in zip(result['levels'], summary):
        assert r['error'] == pytest.approx(1 - s['accuracy'], abs=1e-6), 'the saved weights, evaluated as trained'
    assert [(s['from'], s['to']) for s in result['successive']] == [(0, 1)]
    after = _files(old_folder)
    assert {k: v for k, v in after.items() if not k.startswith('analysis')} == before, 'only analysis/ was written'


def test_overwrite_replaces_an_old_format_run(old_folder, legacy_run, capsys):
    """The fix the refusal names: --overwrite deletes the old run and starts over in the current format."""
    import run
    assert run.main(['-f', str(legacy_run[0]), f'save_folder={old_folder}', 'imp.levels=0', 'max_duration=2ba',
                     'imp.rewind=1ba', '--overwrite']) == 0, capsys.readouterr().err[-2000:]
    rows = json.loads((old_folder / 'summary.json').read_text())['levels']
    assert [r['level'] for r in rows] == [0] and rows[0]['steps'] == 2
    assert not (old_folder / 'level_01').exists()
    cfg = OmegaConf.to_container(OmegaConf.load(old_folder / 'config.yaml'))
    assert cfg['levels'] == 0 and 'imp' not in cfg and 'levels' not in cfg['algorithms']['IMP']
