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
QUICK = os.path.join(ROOT, 'yamls', 'quickstart.yaml')
TINY = ['levels=1', 'algorithms.IMP.rewind=2ba', 'max_duration=4ba', 'eval_interval=4ba', 'data.num_workers=0',
        'progress_bar=false', 'device=cpu', 'checkpoint_interval=null', 'analysis.enabled=false']


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
    from composer_imp.config import IMP_NAMES, load_config
    cfg = load_config(path)
    assert cfg.levels >= 8 and cfg.model.name
    assert cfg.get('imp') is None, 'the shipped recipes use algorithms.IMP, not the deprecated imp: block'
    assert [n for n in IMP_NAMES if n in cfg.algorithms] == ['IMP'] and 0 < cfg.algorithms.IMP.ratio < 1


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize('algorithm, override, reason', [
    ('EMA', 'algorithms.EMA.half_life=10ba', 'its averaged copy of the weights keeps pruned weights non-zero'),
    ('SWA', 'algorithms.SWA={}', 'it overwrites the weights with an average that includes values from before the mask'),
    ('WeightStandardization', 'algorithms.WeightStandardization={}', 'a standardized zero is not zero'),
    ('Factorize', 'algorithms.Factorize={}', 'it replaces Conv/Linear layers by freshly initialized low-rank factors'),
], ids=lambda v: v if v in ('EMA', 'SWA', 'WeightStandardization', 'Factorize') else '')
def test_algorithms_that_cannot_train_under_a_mask_are_refused_with_imp(algorithm, override, reason, tmp_path, capsys):
    import run
    code = run.main(['-f', QUICK, f'save_folder={tmp_path}', 'progress_bar=false', override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f'{algorithm} cannot be combined with IMP: {reason}' in err and 'Remove it from algorithms.' in err, err
    assert not list(tmp_path.iterdir()), 'refused before anything is written'


def test_mcloud_yaml_parses_with_mcli_and_holds_a_valid_recipe():
    from mcli import RunConfig
    from composer_imp.config import config_from_dict
    run = RunConfig.from_file(os.path.join(ROOT, 'yamls', 'mcloud', 'r50_imp.yaml'))
    assert run.compute['gpus'] == 8 and 'composer run.py -f /mnt/config/parameters.yaml' in run.command
    assert any('.[streaming]' in (i.get('pip_install') or '') for i in run.integrations)
    cfg = config_from_dict(dict(run.parameters))
    assert cfg.optimizer.name == 'DecoupledSGDW' and cfg.max_duration == '15970ba'
    assert cfg.algorithms.IMP.rewind == '5000ba' and cfg.levels == 12 and cfg.get('imp') is None


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


def test_reseed_data_order_moves_the_training_order_with_the_data_seed_and_back():
    """Replicates share one recipe (and its loaders); each data seed must get its own order, data seed 0 the loader's
    own, and persistent workers must not keep replaying the first replicate's."""
    from composer_imp.config import load_config
    from composer_imp.data_order import SEED_STRIDE, reseed_data_order
    from composer_imp.recipes import build_recipe
    recipe = build_recipe(load_config(QUICK, ['data.num_workers=1']))
    loader = recipe.train_dataloader
    assert loader.persistent_workers, 'the workers this test must see restarted'
    order = lambda: torch.cat([y for _, y in loader])
    first = order()
    assert torch.equal(order(), first), 'same epoch, same seed: same order'
    base = loader.sampler.seed
    reseed_data_order(loader, 1)
    assert loader.sampler.seed == base + SEED_STRIDE
    second = order()
    assert len(second) == len(first) and not torch.equal(second, first)
    reseed_data_order(loader, 1)  # idempotent: the base seed is remembered, not moved again
    assert torch.equal(order(), second)
    reseed_data_order(loader, 2)
    assert not torch.equal(order(), first) and not torch.equal(order(), second)
    reseed_data_order(loader, 0)
    assert loader.sampler.seed == base and torch.equal(order(), first)


def test_each_replicate_of_a_real_run_trains_on_its_own_data_order(tmp_path):
    """find_ticket(replicates=2) on the recipe's one shared loader: replicate i is built with seed 17 + i and sees the
    order of data seed i (replicate 0 the loader's own), batch for batch."""
    from composer import Callback
    from omegaconf import OmegaConf
    from composer_imp import find_ticket
    from composer_imp.config import load_config
    from composer_imp.data_order import branch_data_seed, reseed_data_order
    from composer_imp.recipes import build_recipe
    recipe = build_recipe(load_config(QUICK, [f'save_folder={tmp_path}', 'data.num_workers=0', 'levels=0',
                                              'algorithms.IMP.rewind=1ba', 'max_duration=3ba', 'eval_interval=3ba',
                                              'model.width=4', 'progress_bar=false', 'analysis.enabled=false']))
    loader = recipe.train_dataloader
    expected = []
    for data_seed in (0, 1):  # the pretraining's first batch in the replicate's order, then level 0's own order
        orders = []
        for seed in (data_seed, branch_data_seed(data_seed, 0, 'new')):
            reseed_data_order(loader, seed)
            loader.sampler.set_epoch(0)
            orders.append([y for _, (x, y) in zip(range(3), loader)])
        expected.append(orders[0][:1] + orders[1][1:])
    reseed_data_order(loader, 0)

    seen = {}

    class Record(Callback):
        def __init__(self, seed):
            self.seed = seed

        def after_dataloader(self, state, logger):
            seen.setdefault(self.seed, []).append(state.batch[1].detach().cpu().clone())

    def make_trainer(level, seed, imp_args):
        trainer = recipe.make_trainer(level, seed, imp_args)
        trainer.state.callbacks.append(Record(seed))
        return trainer

    runs = find_ticket(make_trainer, str(tmp_path), levels=0, seed=17, replicates=2)
    assert [[r['level'] for r in rows] for rows in runs] == [[0], [0]]
    assert sorted(seen) == [17, 18]
    for seed, order in zip((17, 18), expected):
        assert len(seen[seed]) == 3 and all(torch.equal(a, b) for a, b in zip(seen[seed], order)), seed
    assert not torch.equal(torch.cat(seen[17]), torch.cat(seen[18]))
    assert [OmegaConf.load(tmp_path / f'replicate_{i:02d}' / 'config.yaml').seed for i in (0, 1)] == [17, 18]


def test_a_recipe_with_loader_workers_trains_every_level(tmp_path, capsys):
    """The recipes use data.num_workers > 0 (persistent workers) and reuse their loaders for every level: the level-1
    Trainer must not find the loader still holding level 0's iterator (Composer refuses a loader with one)."""
    import run
    code = run.main(['-f', QUICK, f'save_folder={tmp_path}', 'data.num_workers=1', 'levels=1', 'max_duration=2ep',
                     'eval_interval=2ep', 'model.width=4', 'progress_bar=false', 'analysis.enabled=false'])
    assert code == 0, capsys.readouterr().err[-2000:]
    rows = json.loads((tmp_path / 'summary.json').read_text())['levels']
    assert [r['level'] for r in rows] == [0, 1] and rows[1]['weights_remaining'] == pytest.approx(0.8, abs=1e-3)
