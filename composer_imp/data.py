"""Datasets and dataloaders for the recipes.

* ``digits``: scikit-learn's 1797 real 8×8 handwritten digits (ships with scikit-learn, no download);
  a fixed stratified 80/20 split (independent of the run's seed, so every run tests on the same images).
* ``fashion_mnist``: the real Fashion-MNIST read straight from its IDX ``.gz`` files
  (Debian's ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``).

Loaders are built once per process and reused by every level. Batch sizes are *global*: each rank
gets ``batch_size / world_size`` through Composer's ``dist.get_sampler``.

Example:
    >>> train, test = build_datasets('digits')
    >>> len(train) + len(test)
    1797
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Any, Callable, Optional

import numpy as np
import torch
from composer.utils import dist
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ['build_datasets', 'build_dataloaders', 'read_idx', 'DATASETS', 'FASHION_MNIST_ROOT']

FASHION_MNIST_ROOT = '/usr/share/datasets/fashion-mnist'
_FMNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def _subset(images: torch.Tensor, labels: torch.Tensor, n: Optional[int], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None:
        return images, labels
    if not 0 < n <= len(labels):
        raise ValueError(f'data.{key}={n} must be between 1 and the dataset size {len(labels)}.')
    # A fixed permutation (seed 0), so the subset does not change with the run's seed.
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n]
    return images[idx], labels[idx]


def _digits(train_subset: Optional[int] = None) -> tuple[Dataset, Dataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32).reshape(-1, 1, 8, 8) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = x_tr.mean(), x_tr.std()
    to = lambda a: torch.from_numpy((a - mean) / std)
    xtr, ytr = _subset(to(x_tr), torch.from_numpy(y_tr), train_subset, 'train_subset')
    return TensorDataset(xtr, ytr), TensorDataset(to(x_te), torch.from_numpy(y_te))


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f'{path} is not an IDX file of unsigned bytes (bad magic number).')
    ndim = data[3]
    dims = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f'{path} is truncated: header says {dims}, found {body.size} values.')
    return body.reshape(dims)


def _fashion_mnist(data_root: Optional[str] = None, train_subset: Optional[int] = None, pad_to: Optional[int] = None) -> tuple[Dataset, Dataset]:
    root = data_root or FASHION_MNIST_ROOT
    missing = [os.path.join(root, f) for split in _FMNIST_FILES.values() for f in split if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(
            f'Fashion-MNIST not found: data.data_root={root!r} lacks {", ".join(os.path.basename(m) for m in missing)}. '
            'Install it with `apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist), '
            'or set data.data_root to a folder holding the four IDX .gz files '
            f'({", ".join(f for s in _FMNIST_FILES.values() for f in s)}).',
        )

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        img_file, lbl_file = _FMNIST_FILES[split]
        x = torch.from_numpy(read_idx(os.path.join(root, img_file)).astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(read_idx(os.path.join(root, lbl_file)).astype(np.int64))
        x = (x - 0.2860) / 0.3530
        if pad_to:
            p = (pad_to - x.shape[-1]) // 2
            x = torch.nn.functional.pad(x, (p, pad_to - x.shape[-1] - p) * 2, value=float(x.min()))
        return x, y

    xtr, ytr = _subset(*load('train'), train_subset, 'train_subset')
    return TensorDataset(xtr, ytr), TensorDataset(*load('test'))


DATASETS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {
    'digits': _digits,
    'fashion_mnist': _fashion_mnist,
}


def build_datasets(name: str, **kwargs: Any) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets by name; unknown names or options raise ``ValueError``."""
    import inspect

    if name not in DATASETS:
        raise ValueError(f'data.name={name!r} is not a known dataset; known: {", ".join(DATASETS)}.')
    valid = set(inspect.signature(DATASETS[name]).parameters)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(f'data.{unknown[0]} is not an option of dataset {name!r}; valid: {", ".join(sorted(valid))}.')
    return DATASETS[name](**kwargs)


def build_dataloaders(
    train: Dataset,
    test: Dataset,
    batch_size: int,
    eval_batch_size: Optional[int] = None,
    num_workers: int = 0,
    drop_last: bool = True,
) -> tuple[DataLoader, DataLoader]:
    """Dataloaders with Composer's distributed samplers; ``batch_size`` is the global batch size."""
    world = dist.get_world_size()
    eval_batch_size = eval_batch_size or batch_size
    for key, value in (('batch_size', batch_size), ('eval_batch_size', eval_batch_size)):
        if value <= 0 or value % world:
            raise ValueError(f'data.{key}={value} must be a positive multiple of the world size {world} '
                             '(it is the global batch, split evenly across ranks).')
    train_loader = DataLoader(train, batch_size=batch_size // world, sampler=dist.get_sampler(train, shuffle=True, drop_last=drop_last),
                              num_workers=num_workers, drop_last=drop_last, persistent_workers=num_workers > 0)
    eval_loader = DataLoader(test, batch_size=eval_batch_size // world, sampler=dist.get_sampler(test, shuffle=False),
                             num_workers=num_workers, persistent_workers=num_workers > 0)
    return train_loader, eval_loader
