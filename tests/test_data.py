"""Datasets read from real files: the Debian Fashion-MNIST IDX files, IDX files written here, digits."""

import gzip
import os
import struct

import numpy as np
import pytest

from composer_imp.data import FASHION_MNIST_ROOT, build_datasets, read_idx


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files_written_here(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (('train', 50), ('t10k', 20)):
        _write_idx(tmp_path / f'{split}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f'{split}-labels-idx1-ubyte.gz', rng.integers(0, 10, (n,)))
    train, test = build_datasets('fashion_mnist', data_root=str(tmp_path), pad_to=32)
    assert len(train) == 50 and len(test) == 20
    x, y = train[0]
    assert tuple(x.shape) == (1, 32, 32) and 0 <= int(y) < 10
    raw = read_idx(str(tmp_path / 'train-images-idx3-ubyte.gz'))
    assert raw.shape == (50, 28, 28)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / 'bad-idx1-ubyte.gz'
    with gzip.open(path, 'wb') as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack('>I', 100) + bytes(10))
    with pytest.raises(ValueError, match='truncated'):
        read_idx(str(path))


def test_missing_fashion_mnist_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data_root='{tmp_path}'.*apt-get install dataset-fashion-mnist"):
        build_datasets('fashion_mnist', data_root=str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_ROOT) and os.environ.get('CI') != 'true',
                    reason='Debian package dataset-fashion-mnist not installed (CI installs it)')
def test_real_fashion_mnist_from_debian_package():
    train, test = build_datasets('fashion_mnist', train_subset=1000)
    assert len(train) == 1000 and len(test) == 10000
    labels = {int(test[i][1]) for i in range(0, 10000, 37)}
    assert labels == set(range(10))


def test_digits_split_is_fixed_and_stratified():
    a_train, a_test = build_datasets('digits')
    b_train, b_test = build_datasets('digits')
    assert len(a_test) == 360 and len(a_train) == 1437
    assert (a_test.tensors[0] == b_test.tensors[0]).all()


def test_per_rank_batch_sizes_split_the_global_batch():
    from composer_imp.data import per_rank_batch_sizes
    assert per_rank_batch_sizes(64, 360) == (64, 360)  # one process: the global batch is the rank's
    assert per_rank_batch_sizes(64, None) == (64, 64)  # eval defaults to the training batch
    with pytest.raises(ValueError, match='data.batch_size=0 must be a positive multiple of the world size 1'):
        per_rank_batch_sizes(0, 8)


def test_without_augmentation_is_the_evaluation_view_of_the_training_set():
    import torch
    from composer_imp import data, evaluate
    assert data.without_augmentation is evaluate.without_augmentation  # re-exported where it used to live
    train, _ = build_datasets('digits')
    assert data.without_augmentation(train) is train  # tensors carry no augmentation

    class Augmented(torch.utils.data.Dataset):
        transform, eval_transform = 'random crop', 'center crop'

    view = data.without_augmentation(Augmented())
    assert view.transform == 'center crop' and Augmented.transform == 'random crop'
