"""Datasets and dataloaders for the recipes.

* ``digits``: scikit-learn's 1797 real 8×8 handwritten digits (ships with scikit-learn, no download);
  a fixed stratified 80/20 split (independent of the run's seed, so every run tests on the same images).
* ``fashion_mnist``: the real Fashion-MNIST read straight from its IDX ``.gz`` files
  (Debian's ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``).
* ``cifar10`` / ``cifar100``: the python-pickle batches of ``cifar-10-batches-py`` / ``cifar-100-python``
  under ``data_root`` (as torchvision downloads them), read with an unpickler that admits only numpy arrays;
  training augmentation: random crop 32 with 4-pixel padding and horizontal flip.
* ``imagefolder``: an ImageNet-style ``train/`` and ``val/`` tree of class folders (torchvision
  ``ImageFolder``); Mosaic's recipe transforms (train random-resized-crop 176 + flip, eval resize 232 + center 224).
* ``ffcv``: FFCV ``.beton`` files with Mosaic's pipeline; see :mod:`composer_imp.data.ffcv`.
* ``streaming``: MosaicML Streaming MDS shards (local or remote) written by ``python -m composer_imp.data.convert``
  from cifar10 / cifar100 / fashion_mnist; see :mod:`composer_imp.data.streaming`.

Loaders are built once per process and reused by every level. Batch sizes are *global*: each rank
gets ``batch_size / world_size`` through Composer's ``dist.get_sampler``.

Example:
    >>> train, test = build_datasets('digits')
    >>> len(train) + len(test)
    1797
"""

from __future__ import annotations

import gzip
import inspect
import os
import pickle
import struct
from typing import Any, Callable, Optional

import numpy as np
import torch
from composer.utils import dist
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from composer_imp.data.ffcv import BetonExamples, ffcv_loaders
from composer_imp.data.normalization import NORMALIZATION
from composer_imp.data.streaming import streaming_datasets
from composer_imp.evaluate import without_augmentation

__all__ = ['build_datasets', 'build_dataloaders', 'make_loaders', 'per_rank_batch_sizes', 'read_idx', 'raw_arrays', 'without_augmentation', 'DATASETS', 'FASHION_MNIST_ROOT']

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


def _digits(train_subset: Optional[int] = None, eval_subset: Optional[int] = None) -> tuple[Dataset, Dataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32).reshape(-1, 1, 8, 8) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = x_tr.mean(), x_tr.std()
    to = lambda a: torch.from_numpy((a - mean) / std)
    xtr, ytr = _subset(to(x_tr), torch.from_numpy(y_tr), train_subset, 'train_subset')
    xte, yte = to(x_te), torch.from_numpy(y_te)
    if eval_subset is not None:
        if not 0 < eval_subset <= len(yte):
            raise ValueError(f'data.eval_subset={eval_subset} must be between 1 and the test set size {len(yte)}.')
        xte, yte = xte[:eval_subset], yte[:eval_subset]
    return TensorDataset(xtr, ytr), TensorDataset(xte, yte)


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


def _check_fmnist(root: str) -> None:
    missing = [os.path.join(root, f) for split in _FMNIST_FILES.values() for f in split if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(
            f'Fashion-MNIST not found: data.data_root={root!r} lacks {", ".join(os.path.basename(m) for m in missing)}. '
            'Install it with `apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist), '
            'or set data.data_root to a folder holding the four IDX .gz files '
            f'({", ".join(f for s in _FMNIST_FILES.values() for f in s)}).',
        )


def _fashion_mnist(data_root: Optional[str] = None, train_subset: Optional[int] = None, pad_to: Optional[int] = None) -> tuple[Dataset, Dataset]:
    arrays = raw_arrays('fashion_mnist', data_root)

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = arrays[split]
        (mean,), (std,) = NORMALIZATION['fashion_mnist']
        x = (torch.from_numpy(images.astype(np.float32) / 255.0) - mean) / std
        if pad_to:
            p = (pad_to - x.shape[-1]) // 2
            x = torch.nn.functional.pad(x, (p, pad_to - x.shape[-1] - p) * 2, value=float(x.min()))
        return x, torch.from_numpy(labels)

    xtr, ytr = _subset(*load('train'), train_subset, 'train_subset')
    return TensorDataset(xtr, ytr), TensorDataset(*load('val'))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles of dicts of numpy arrays: admit exactly those, nothing executable."""

    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
               ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', 'scalar'),
               ('numpy._core.multiarray', 'scalar'), ('_codecs', 'encode')}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refusing to load {module}.{name} from a CIFAR batch file')


def _read_cifar_batch(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, 'rb') as f:
            batch = _NumpyOnlyUnpickler(f, encoding='bytes').load()
        images = np.asarray(batch[b'data'], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
        raise ValueError(f'{path} is not a CIFAR python batch (a pickled dict with b"data" and {label_key!r}): {e}') from None
    return images, labels


class CifarDataset(Dataset):
    """CIFAR images held as uint8, normalized with ``kind``'s statistics (and augmented for training) per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool, kind: str = 'cifar10'):
        self.images, self.labels, self.train, self.kind = torch.from_numpy(images), torch.from_numpy(labels), train, kind
        mean, std = NORMALIZATION[kind]
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float() / 255.0
        if self.train:  # random crop 32 from the 4-padded image, then a coin-flip mirror
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))
            top, left = torch.randint(0, 9, (2,)).tolist()
            x = x[:, top:top + 32, left:left + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[i]

    def without_augmentation(self) -> 'CifarDataset':
        """The same images (shared memory) served like evaluation images: no crop, no flip."""
        return CifarDataset(self.images.numpy(), self.labels.numpy(), train=False, kind=self.kind)  # from_numpy: no copy


def _cifar(classes: int, data_root: Optional[str] = None, train_subset: Optional[int] = None) -> tuple[Dataset, Dataset]:
    kind = 'cifar10' if classes == 10 else 'cifar100'
    arrays = raw_arrays(kind, data_root)
    x, y = arrays['train']
    xt, yt = _subset(torch.from_numpy(x), torch.from_numpy(y), train_subset, 'train_subset')
    return CifarDataset(xt.numpy(), yt.numpy(), train=True, kind=kind), CifarDataset(*arrays['val'], train=False, kind=kind)


def _imagefolder(data_root: Optional[str] = None, train_crop: int = 176, eval_resize: int = 232, eval_crop: int = 224) -> tuple[Dataset, Dataset]:
    from torchvision import datasets, transforms

    root = data_root or 'data/imagenet'
    for split in ('train', 'val'):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f'ImageFolder data not found: {os.path.join(root, split)!r} is missing. data.data_root '
                                    'must hold train/ and val/, each with one sub-folder of images per class.')
    normalize = transforms.Normalize(*NORMALIZATION['imagenet'])
    train = datasets.ImageFolder(os.path.join(root, 'train'), transforms.Compose([
        transforms.RandomResizedCrop(train_crop), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    eval_transform = transforms.Compose([
        transforms.Resize(eval_resize), transforms.CenterCrop(eval_crop), transforms.ToTensor(), normalize])
    val = datasets.ImageFolder(os.path.join(root, 'val'), eval_transform)
    train.eval_transform = eval_transform  # for without_augmentation(): training images, evaluation transform
    if train.classes != val.classes:
        raise ValueError(f'{root}: train/ and val/ have different class folders.')
    return train, val


def raw_arrays(name: str, data_root: Optional[str] = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Undecoded uint8 images (N, C, H, W) and int64 labels of a dataset's ``train`` and ``val`` splits."""
    if name in ('cifar10', 'cifar100'):
        classes = 10 if name == 'cifar10' else 100
        folder, train_files, test_file, key = (
            ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], 'test_batch', b'labels') if classes == 10 else
            ('cifar-100-python', ['train'], 'test', b'fine_labels'))
        root = os.path.join(data_root or 'data', folder)
        missing = [f for f in train_files + [test_file] if not os.path.isfile(os.path.join(root, f))]
        if missing:
            raise FileNotFoundError(
                f'CIFAR-{classes} not found: {root!r} lacks {", ".join(missing)}. Set data.data_root to the folder that '
                f'contains {folder}/ (the python version from https://www.cs.toronto.edu/~kriz/cifar.html, or what '
                f'torchvision.datasets.CIFAR{classes}(root, download=True) leaves in root).',
            )
        parts = [_read_cifar_batch(os.path.join(root, f), key) for f in train_files]
        return {'train': (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
                'val': _read_cifar_batch(os.path.join(root, test_file), key)}
    if name == 'fashion_mnist':
        root = data_root or FASHION_MNIST_ROOT
        _check_fmnist(root)
        out = {}
        for split, (img, lbl) in (('train', _FMNIST_FILES['train']), ('val', _FMNIST_FILES['test'])):
            out[split] = (read_idx(os.path.join(root, img))[:, None], read_idx(os.path.join(root, lbl)).astype(np.int64))
        return out
    raise ValueError(f'No raw-array reader for dataset {name!r}; convertible datasets: cifar10, cifar100, fashion_mnist.')


def _streaming(data_root: Optional[str] = None, local: Optional[str] = None, remote: Optional[str] = None,
               kind: str = 'cifar10', shuffle_seed: int = 9176, device_batch_size: Optional[int] = None,
               device_eval_batch_size: Optional[int] = None) -> tuple[Dataset, Dataset]:
    """MDS shards: ``local`` (or ``data_root``) is the shard folder, or the cache folder when ``remote`` is set.
    Streaming needs the per-device batch sizes (for deterministic resumption); the recipe passes them."""
    folder = local or data_root
    if folder is None:
        raise ValueError('data.name=streaming needs data.local (or data.data_root): the folder of the MDS shards, '
                         'or the local cache folder when data.remote is set.')
    return streaming_datasets(folder, remote, kind, shuffle_seed, device_batch_size, device_eval_batch_size)


DATASETS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {
    'digits': _digits,
    'fashion_mnist': _fashion_mnist,
    'cifar10': lambda data_root=None, train_subset=None: _cifar(10, data_root, train_subset),
    'cifar100': lambda data_root=None, train_subset=None: _cifar(100, data_root, train_subset),
    'imagefolder': _imagefolder,
    'streaming': _streaming,
}


def build_datasets(name: str, **kwargs: Any) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets by name; unknown names or options raise ``ValueError``."""

    if name not in DATASETS:
        raise ValueError(f'data.name={name!r} is not a known dataset; known: {", ".join(DATASETS)}.')
    valid = set(inspect.signature(DATASETS[name]).parameters)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(f'data.{unknown[0]} is not an option of dataset {name!r}; valid: {", ".join(sorted(valid))}.')
    return DATASETS[name](**kwargs)


def per_rank_batch_sizes(batch_size: int, eval_batch_size: Optional[int]) -> tuple[int, int]:
    """Per-rank (train, eval) batch sizes from the global ones; each must divide by the world size."""
    world = dist.get_world_size()
    eval_batch_size = eval_batch_size or batch_size
    for key, value in (('batch_size', batch_size), ('eval_batch_size', eval_batch_size)):
        if value <= 0 or value % world:
            raise ValueError(f'data.{key}={value} must be a positive multiple of the world size {world} '
                             '(it is the global batch, split evenly across ranks).')
    return batch_size // world, eval_batch_size // world


def make_loaders(name: str, data_kwargs: dict, loader_kwargs: dict, seed: int = 0) -> tuple[Any, Any, Any]:
    """``(sweep_data, train_loader, eval_loader)`` for a ``data:`` section.

    ``sweep_data`` holds the training examples without augmentation, for AdaptiveIMP's sweep and BatchNorm
    recalibration: a map-style dataset, or :class:`~composer_imp.data.ffcv.BetonExamples` for FFCV.
    """
    if name == 'ffcv':
        batch, eval_batch = per_rank_batch_sizes(loader_kwargs['batch_size'], loader_kwargs.get('eval_batch_size'))
        root = data_kwargs.pop('data_root', None) or data_kwargs.pop('local', None)
        if root is None:
            raise ValueError('data.name=ffcv needs data.data_root: the folder holding train.beton and val.beton.')
        train, val = ffcv_loaders(root, batch_size=batch, eval_batch_size=eval_batch,
                                  num_workers=max(1, loader_kwargs.get('num_workers', 1)), seed=seed,
                                  distributed=dist.get_world_size() > 1, drop_last=loader_kwargs.get('drop_last', True), **data_kwargs)
        crops = {k: v for k, v in data_kwargs.items() if k in ('kind', 'train_crop', 'eval_resize', 'eval_crop')}
        return BetonExamples(root, **crops), train, val
    train, test = build_datasets(name, **data_kwargs)
    return (without_augmentation(train), *build_dataloaders(train, test, **loader_kwargs, seed=seed))


def build_dataloaders(
    train: Dataset,
    test: Dataset,
    batch_size: int,
    eval_batch_size: Optional[int] = None,
    num_workers: int = 0,
    drop_last: bool = True,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Dataloaders with Composer's distributed samplers; ``batch_size`` is the global batch size and the training
    order follows ``seed`` (the run's seed, so replicates see different orders)."""
    batch, eval_batch = per_rank_batch_sizes(batch_size, eval_batch_size)
    # A StreamingDataset (iterable) partitions training samples over ranks itself; everything else, eval sets
    # included (Streaming's val shards are read by index), uses Composer's sampler, whose eval padding Composer's
    # eval loop removes from the metrics, so every eval example counts exactly once.
    train_sampler = None if isinstance(train, IterableDataset) else dist.get_sampler(train, shuffle=True, drop_last=drop_last, seed=seed)
    eval_sampler = None if isinstance(test, IterableDataset) else dist.get_sampler(test, shuffle=False)
    train_loader = DataLoader(train, batch_size=batch, sampler=train_sampler,
                              num_workers=num_workers, drop_last=drop_last, persistent_workers=num_workers > 0)
    eval_loader = DataLoader(test, batch_size=eval_batch, sampler=eval_sampler,
                             num_workers=num_workers, persistent_workers=num_workers > 0)
    return train_loader, eval_loader
