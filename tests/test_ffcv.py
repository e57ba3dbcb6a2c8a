"""FFCV: .beton files written by the converter from CIFAR files and an ImageFolder tree, read back by IMP runs."""

import json
import os

import pytest
import torch

if os.environ.get('CI') != 'true':  # CI installs FFCV's system libraries and ffcv; nothing may skip there
    pytest.importorskip('ffcv', reason="ffcv is not installed (apt-get install -y pkg-config libopencv-dev "
                        "libturbojpeg0-dev; pip install -e '.[ffcv]')")

from omegaconf import OmegaConf

from conftest import ROOT, normalized
from test_recipes import _write_cifar, _write_imagefolder

pytestmark = pytest.mark.slow  # launcher subprocesses, SIGKILL, format round trips: `-m 'not slow'` skips them

CIFAR10 = os.path.join(ROOT, 'yamls', 'cifar10_resnet20_imp.yaml')
# One level of a 4-step run, on CPU, in the main process (no loader workers); the component's rewind is added per run.
TINY = ['levels=1', 'max_duration=4ba', 'eval_interval=4ba', 'data.num_workers=0', 'progress_bar=false', 'device=cpu',
        'checkpoint_interval=null', 'analysis.enabled=false']


def _adaptive_recipe(tmp_path, **settings):
    """The CIFAR-10 recipe with AdaptiveIMP in place of its IMP (a dotted override cannot remove algorithms.IMP)."""
    cfg = OmegaConf.load(CIFAR10)
    cfg.algorithms = {'AdaptiveIMP': {**OmegaConf.to_container(cfg.algorithms.IMP), **settings}}
    path = tmp_path / 'adaptive.yaml'
    OmegaConf.save(cfg, path)
    return str(path)


def test_cifar_to_beton_then_train_imp(tmp_path, capsys):
    import run
    from composer_imp.data import build_datasets
    from composer_imp.data.convert import main as convert
    from composer_imp.data.ffcv import ffcv_loaders
    _write_cifar(tmp_path / 'data', 10)
    assert convert(['--format', 'ffcv', '--dataset', 'cifar10', '--data-root', str(tmp_path / 'data'),
                    '--out', str(tmp_path / 'ffcv')]) == 0
    # evaluation batches equal the in-memory loader's (same pixels, same normalization)
    _, val = ffcv_loaders(str(tmp_path / 'ffcv'), 'cifar10', batch_size=10, eval_batch_size=20)
    x, y = next(iter(val))
    _, mem_val = build_datasets('cifar10', data_root=str(tmp_path / 'data'))
    assert tuple(x.shape) == (20, 3, 32, 32) and torch.equal(y, mem_val.labels)
    assert torch.allclose(x, torch.stack([mem_val[i][0] for i in range(20)]), atol=1e-5)

    code = run.main(['-f', CIFAR10, f'save_folder={tmp_path / "run"}',
                     'data.name=ffcv', f'data.data_root={tmp_path / "ffcv"}', 'data.kind=cifar10',
                     'data.batch_size=10', 'data.eval_batch_size=10', *TINY, 'algorithms.IMP.rewind=2ba'])
    assert code == 0, capsys.readouterr().err[-2000:]
    rows = json.loads((tmp_path / 'run' / 'summary.json').read_text())['levels']
    assert [r['level'] for r in rows] == [0, 1] and rows[1]['start_step'] == 2

    # AdaptiveIMP from .beton: its fixed subsample is read by index with the evaluation pipeline
    from composer_imp.data import raw_arrays
    from composer_imp.data.ffcv import BetonExamples
    examples = BetonExamples(str(tmp_path / 'ffcv'), 'cifar10')
    (bx, by), = examples.batches([57, 3, 88], 3)
    images, labels = raw_arrays('cifar10', str(tmp_path / 'data'))['train']
    expected = normalized(images[[57, 3, 88]], 'cifar10')
    assert len(examples) == 100 and by.tolist() == labels[[57, 3, 88]].tolist()
    assert torch.allclose(bx, expected, atol=1e-5)
    code = run.main(['-f', _adaptive_recipe(tmp_path, rewind='1ep', subsample=40, batch_size=20),
                     f'save_folder={tmp_path / "adaptive"}', 'data.name=ffcv', f'data.data_root={tmp_path / "ffcv"}',
                     'data.kind=cifar10', 'data.batch_size=10', 'data.eval_batch_size=10', *TINY, 'max_duration=2ep',
                     'eval_interval=1ep'])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert 'AdaptiveIMP' in OmegaConf.load(tmp_path / 'adaptive' / 'config.yaml').algorithms
    level1 = json.loads((tmp_path / 'adaptive' / 'summary.json').read_text())['levels'][1]
    sweep = level1['sweep']
    assert sweep['table'] and sweep['forward_samples'] > 0 and sweep['epsilon'] > 0
    assert level1['ratio'] == sweep['pruned'] == max(sweep['chosen'] or 0, 0.2)


def test_imagefolder_to_beton_and_refusals(tmp_path, capsys):
    from composer_imp.data.convert import main as convert
    from composer_imp.data.ffcv import ffcv_loaders
    _write_imagefolder(tmp_path / 'img', per_class=3, size=(40, 50))
    args = ['--format', 'ffcv', '--dataset', 'imagefolder', '--data-root', str(tmp_path / 'img'), '--out', str(tmp_path / 'out')]
    assert convert(args) == 0
    train, val = ffcv_loaders(str(tmp_path / 'out'), 'imagenet', batch_size=2, eval_batch_size=6, train_crop=32, eval_crop=32,
                              eval_resize=36)
    x, y = next(iter(train))
    assert tuple(x.shape) == (2, 3, 32, 32)
    assert sorted(next(iter(val))[1].tolist()) == [0, 0, 0, 1, 1, 1]
    assert convert(args) == 2 and 'refusing to overwrite' in capsys.readouterr().err
    try:
        ffcv_loaders(str(tmp_path / 'nothing'), 'cifar10', 2, 2)
    except FileNotFoundError as e:
        assert 'train.beton' in str(e) and 'composer_imp.data.convert --format ffcv' in str(e)
    else:
        raise AssertionError('missing .beton files must be refused')
