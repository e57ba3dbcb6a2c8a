"""The paper's recipes: every YAML validates, and each runs a few real steps on small files in the real format."""

import glob
import json
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import ROOT, normalized

RECIPES = sorted(glob.glob(os.path.join(ROOT, 'yamls', '*.yaml')))
TINY = ['imp.levels=1', 'imp.rewind=2ba', 'max_duration=4ba', 'eval_interval=4ba', 'data.num_workers=0',
        'progress_bar=false', 'device=cpu', 'imp.checkpoint_interval=null', 'analysis.enabled=false']


def _write_cifar(root, classes, test_size=20):
    rng = np.random.default_rng(0)
    if classes == 10:
        folder, files, key = root / 'cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch'], b'labels'
    else:
        folder, files, key = root / 'cifar-100-python', ['train', 'test'], b'fine_labels'
    folder.mkdir(parents=True)
    for name in files:  # the official format: a pickled dict of a uint8 N x 3072 array and a label list
        n = test_size if name.startswith('test') else 20
        batch = {b'batch_label': b'x', b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: rng.integers(0, classes, n).tolist()}
        with open(folder / name, 'wb') as f:
            pickle.dump(batch, f)


def _write_imagefolder(root, per_class, size, classes=('n01', 'n02')):
    """An ImageNet-style train/ and val/ tree of random JPEGs, one folder per class."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / cls / f'{i}.jpg')


@pytest.mark.parametrize('path', RECIPES, ids=os.path.basename)
def test_every_recipe_yaml_is_a_valid_config(path):
    from composer_imp.config import load_config
    cfg = load_config(path)
    assert cfg.imp.levels >= 8 and cfg.model.name


@pytest.mark.parametrize('recipe, classes', [('cifar10_resnet20_imp.yaml', 10), ('cifar100_resnet18_imp.yaml', 100)])
def test_cifar_recipe_runs_on_cifar_files(recipe, classes, tmp_path, capsys):
    import run
    _write_cifar(tmp_path / 'data', classes)
    code = run.main(['-f', os.path.join(ROOT, 'yamls', recipe), f'save_folder={tmp_path / "run"}',
                     f'data.data_root={tmp_path / "data"}', 'data.batch_size=8', 'data.eval_batch_size=10', *TINY])
    assert code == 0, capsys.readouterr().err[-2000:]
    rows = json.loads((tmp_path / 'run' / 'summary.json').read_text())['levels']
    assert [r['level'] for r in rows] == [0, 1] and rows[1]['start_step'] == 2 and rows[1]['steps'] == 2


def test_cifar_missing_folder_and_foreign_pickles_are_refused(tmp_path):
    from composer_imp.data import build_datasets
    with pytest.raises(FileNotFoundError, match='cifar-10-batches-py.*lacks data_batch_1'):
        build_datasets('cifar10', data_root=str(tmp_path))
    _write_cifar(tmp_path, 10)
    with open(tmp_path / 'cifar-10-batches-py' / 'test_batch', 'wb') as f:
        pickle.dump({b'data': os.system, b'labels': []}, f)  # a pickle that would import os.system
    with pytest.raises(ValueError, match='refusing to load posix.system|refusing to load os.system'):
        build_datasets('cifar10', data_root=str(tmp_path))


def test_r50_recipe_runs_on_an_imagefolder_tree(tmp_path, capsys):
    import run
    _write_imagefolder(tmp_path / 'imagenet', per_class=4, size=(64, 80))
    code = run.main(['-f', os.path.join(ROOT, 'yamls', 'r50_imp.yaml'), f'save_folder={tmp_path / "run"}',
                     f'data.data_root={tmp_path / "imagenet"}', 'data.batch_size=4', 'data.eval_batch_size=8',
                     'precision=fp32', 'model.num_classes=2', 'data.train_crop=64', 'data.eval_resize=72',
                     'data.eval_crop=64', *TINY])
    assert code == 0, capsys.readouterr().err[-2000:]
    rows = json.loads((tmp_path / 'run' / 'summary.json').read_text())['levels']
    assert len(rows) == 2 and rows[1]['weights_remaining'] == pytest.approx(0.8, abs=1e-3)
    # BlurPool's surgery renamed strided convs before the masks were made: masks and weights share those names
    mask = torch.load(tmp_path / 'run' / 'level_01' / 'mask.pt', weights_only=True)
    weights = torch.load(tmp_path / 'run' / 'level_01' / 'weights.pt', weights_only=True)
    blurred = [k for k in mask if k.endswith('.conv.weight')]
    assert blurred and set(mask) <= set(weights)
    assert all(torch.all(weights[k][~mask[k]] == 0) for k in mask)


def test_ema_is_refused_with_imp(tmp_path, capsys):
    import run
    code = run.main(['-f', os.path.join(ROOT, 'yamls', 'quickstart.yaml'), f'save_folder={tmp_path}',
                     'algorithms={EMA: {half_life: 10ba}}'])
    assert code == 2 and 'EMA/SWA cannot be combined with IMP' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_mcloud_yaml_parses_with_mcli_and_holds_a_valid_recipe():
    from mcli import RunConfig
    from composer_imp.config import config_from_dict
    run = RunConfig.from_file(os.path.join(ROOT, 'yamls', 'mcloud', 'r50_imp.yaml'))
    assert run.compute['gpus'] == 8 and 'composer run.py -f /mnt/config/parameters.yaml' in run.command
    assert any('.[streaming]' in (i.get('pip_install') or '') for i in run.integrations)
    cfg = config_from_dict(dict(run.parameters))
    assert cfg.optimizer.name == 'DecoupledSGDW' and cfg.max_duration == '15970ba' and cfg.imp.rewind == '5000ba'


def test_sweep_data_is_the_training_set_without_augmentation(tmp_path):
    """AdaptiveIMP's fixed subsample must not change between levels: no random crop or flip in it."""
    from composer_imp.data import make_loaders, raw_arrays
    _write_cifar(tmp_path / 'data', 10)
    sweep, train_loader, _ = make_loaders('cifar10', {'data_root': str(tmp_path / 'data')}, {'batch_size': 10})
    expected = normalized(raw_arrays('cifar10', str(tmp_path / 'data'))['train'][0], 'cifar10')
    assert len(sweep) == len(train_loader.dataset) == 100
    assert all(torch.equal(sweep[i][0], expected[i]) for i in range(100))
    torch.manual_seed(0)
    assert sum(not torch.equal(train_loader.dataset[i][0], expected[i]) for i in range(100)) > 90, 'training still augments'

    _write_imagefolder(tmp_path / 'img', per_class=2, size=(40, 50))
    sweep, train_loader, val_loader = make_loaders('imagefolder', {'data_root': str(tmp_path / 'img'), 'train_crop': 24,
                                                                   'eval_resize': 36, 'eval_crop': 32}, {'batch_size': 2})
    assert torch.equal(sweep[1][0], sweep[1][0]) and tuple(sweep[1][0].shape) == (3, 32, 32)  # center crop, every time
    assert tuple(train_loader.dataset[1][0].shape) == (3, 24, 24)


def test_reseed_moves_the_training_order_with_the_seed_and_back():
    """Replicates share one recipe (and its loaders); each seed must get its own data order, and persistent
    workers must not keep replaying the first replicate's."""
    from composer_imp.config import load_config
    from composer_imp.recipes import build_recipe
    recipe = build_recipe(load_config(os.path.join(ROOT, 'yamls', 'quickstart.yaml'), ['data.num_workers=1']))
    order = lambda: torch.cat([y for _, y in recipe.train_dataloader])
    first = order()
    recipe.reseed(18)
    assert recipe.cfg.seed == 18 and not torch.equal(order(), first)
    recipe.reseed(17)
    assert torch.equal(order(), first)
