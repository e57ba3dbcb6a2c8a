"""FFCV: ``.beton`` files and loaders with the decode / crop / flip / normalize pipeline of Mosaic's ResNet recipe.

Install: ``apt-get install -y pkg-config libopencv-dev libturbojpeg0-dev`` then ``pip install -e '.[ffcv]'``.
Write with ``python -m composer_imp.data.convert --format ffcv ...`` (``OUT/train.beton``, ``OUT/val.beton``),
read with ``data: {name: ffcv, data_root: OUT, kind: cifar10 | cifar100 | imagenet}``.

Pipelines (CPU tensors; Composer moves batches to the device):

* images, training: ``cifar*``: decode, ``RandomTranslate(padding=4)``, ``RandomHorizontalFlip``;
  ``imagenet``: ``RandomResizedCropRGBImageDecoder((train_crop, train_crop))``, ``RandomHorizontalFlip``;
* images, evaluation: ``cifar*``: decode; ``imagenet``: ``CenterCropRGBImageDecoder((eval_crop, eval_crop),
  ratio=eval_crop / eval_resize)``;
* then ``NormalizeImage(mean, std, float32)``, ``ToTensor``, ``ToTorchImage``; labels: ``IntDecoder``,
  ``ToTensor``, ``Squeeze(1)``.

The first epoch of a process pays FFCV's numba compilation (a few seconds). FFCV loaders have no map-style
dataset: AdaptiveIMP's sweep and the analysis's BatchNorm recalibration read their fixed subsample of
``train.beton`` through :class:`BetonExamples` (evaluation pipeline, chosen indices).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import numpy as np
from composer.utils import dist

from composer_imp.data.normalization import NORMALIZATION

__all__ = ['write_beton', 'ffcv_loaders', 'BetonExamples', 'EvenBatches', 'KINDS']

KINDS = {kind: NORMALIZATION[kind] for kind in ('cifar10', 'cifar100', 'imagenet')}


class _Indexed:
    def __init__(self, images: Any, labels: Any):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 3:
            image = np.ascontiguousarray(image.transpose(1, 2, 0))  # CHW -> HWC for FFCV
        return image, int(self.labels[i])


def write_beton(images: Any, labels: Any, path: str, jpeg: bool = False, max_resolution: Optional[int] = None) -> int:
    """Write RGB images (uint8 N×3×H×W arrays, or PIL images) and labels to an FFCV ``.beton`` file."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if os.path.exists(path):
        raise FileExistsError(f'{path} exists; refusing to overwrite. Remove it or choose another --out.')
    if isinstance(images, np.ndarray) and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3):
        raise ValueError(f'FFCV RGB images must be uint8 N x 3 x H x W; got {images.dtype} {images.shape}.')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    field = RGBImageField(write_mode='jpg' if jpeg else 'raw', max_resolution=max_resolution)
    DatasetWriter(path, {'image': field, 'label': IntField()}, num_workers=1).from_indexed_dataset(_Indexed(images, labels))
    return len(labels)


def _pipelines(kind: str, train_crop: int, eval_resize: int, eval_crop: int) -> tuple[dict, dict]:
    """(train, eval) FFCV pipelines for ``kind`` (see the module docstring)."""
    from ffcv.fields.decoders import (CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder,
                                      SimpleRGBImageDecoder)
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, RandomTranslate, Squeeze, ToTensor, ToTorchImage

    if kind not in KINDS:
        raise ValueError(f'data.kind={kind!r} is not a known FFCV kind; known: {", ".join(KINDS)}.')
    mean, std = (np.array(v) * 255 for v in KINDS[kind])
    tail = lambda: [NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()]
    labels = lambda: [IntDecoder(), ToTensor(), Squeeze(1)]  # (B, 1) -> (B,), also when B = 1
    if kind == 'imagenet':
        train_images = [RandomResizedCropRGBImageDecoder((train_crop, train_crop)), RandomHorizontalFlip()]
        eval_images = [CenterCropRGBImageDecoder((eval_crop, eval_crop), ratio=eval_crop / eval_resize)]
    else:
        train_images = [SimpleRGBImageDecoder(), RandomTranslate(padding=4), RandomHorizontalFlip()]
        eval_images = [SimpleRGBImageDecoder()]
    return ({'image': train_images + tail(), 'label': labels()}, {'image': eval_images + tail(), 'label': labels()})


def _check_files(root: str) -> None:
    missing = [os.path.join(root, f) for f in ('train.beton', 'val.beton') if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(f'FFCV files not found: {", ".join(missing)}. Write them with `python -m '
                                f'composer_imp.data.convert --format ffcv --dataset ... --out {root}`.')


class BetonExamples:
    """Training examples of ``root/train.beton`` decoded with the *evaluation* pipeline, by index.

    FFCV has no map-style dataset; this gives AdaptiveIMP's sweep and BatchNorm recalibration their fixed,
    un-augmented subsample (:func:`composer_imp.evaluate.fixed_subsample` calls :meth:`batches`).
    """

    def __init__(self, root: str, kind: str, train_crop: int = 176, eval_resize: int = 232, eval_crop: int = 224,
                 num_workers: int = 1):
        from ffcv.reader import Reader

        _check_files(root)
        self.path = os.path.join(root, 'train.beton')
        self.pipelines = lambda: _pipelines(kind, train_crop, eval_resize, eval_crop)[1]  # fresh operations per loader
        self.num_workers = num_workers
        self.num_samples = Reader(self.path).num_samples

    def __len__(self) -> int:
        return self.num_samples

    def batches(self, indices: list[int], batch_size: int) -> list:
        """The examples at ``indices``, in that order, as CPU ``(images, labels)`` batches."""
        from ffcv.loader import Loader, OrderOption

        loader = Loader(self.path, batch_size=batch_size, num_workers=self.num_workers, order=OrderOption.SEQUENTIAL,
                        indices=np.asarray(indices, dtype='uint64'), drop_last=False, distributed=False,
                        pipelines=self.pipelines())
        return [(x.clone(), y.clone()) for x, y in loader]  # FFCV reuses its output buffers between epochs


def ffcv_loaders(root: str, kind: str, batch_size: int, eval_batch_size: int, num_workers: int = 1, seed: int = 0,
                 distributed: bool = False, train_crop: int = 176, eval_resize: int = 232, eval_crop: int = 224,
                 drop_last: bool = True):
    """(train, eval) FFCV loaders over ``root/train.beton`` and ``root/val.beton`` (per-rank batch sizes)."""
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    train_pipes, eval_pipes = _pipelines(kind, train_crop, eval_resize, eval_crop)
    _check_files(root)
    eval_indices, eval_batches = None, None
    if distributed:
        # FFCV's distributed order pads ranks with repeated examples, which Composer cannot trim from the metrics.
        # Each rank reads its strided share unpadded instead (shares differ by at most one example) ...
        n, world = int(Reader(os.path.join(root, 'val.beton')).num_samples), dist.get_world_size()
        eval_indices = np.arange(dist.get_global_rank(), n, world, dtype='uint64')  # FFCV's index type
        eval_batches = math.ceil(math.ceil(n / world) / eval_batch_size)  # ... in the batch count of the largest share
        if n < world or (eval_batch_size < 2 and n % world):  # decided on every rank alike
            raise ValueError(f'{root}/val.beton has {n} examples for {world} ranks with a per-rank eval batch of '
                             f'{eval_batch_size}: every rank needs at least one example, and uneven shares need a '
                             'per-rank data.eval_batch_size of at least 2.')
    train = Loader(os.path.join(root, 'train.beton'), batch_size=batch_size, num_workers=num_workers,
                   order=OrderOption.RANDOM, drop_last=drop_last, seed=seed, distributed=distributed, pipelines=train_pipes)
    val = Loader(os.path.join(root, 'val.beton'), batch_size=eval_batch_size, num_workers=num_workers,
                 order=OrderOption.SEQUENTIAL, drop_last=False, indices=eval_indices, distributed=False,
                 pipelines=eval_pipes)
    return train, (val if eval_batches is None else EvenBatches(val, eval_batches))


class EvenBatches:
    """An eval loader yielding exactly ``num_batches`` batches, splitting its last batch in two if it has one fewer.

    Composer stops evaluating on every rank as soon as one rank's loader is exhausted, so all ranks must yield
    the same number of batches; a rank whose unpadded share is one example short may need one more, smaller batch.
    """

    def __init__(self, loader: Any, num_batches: int):
        have = len(loader)
        if have not in (num_batches, num_batches - 1) or (have < num_batches and loader.batch_size < 2):
            raise ValueError(f'Cannot spread this rank\'s {len(loader.indices)} eval examples over {num_batches} batches; '
                             'choose a data.eval_batch_size of at least 2 per rank.')
        self.loader, self.num_batches = loader, num_batches
        self.batch_size = loader.batch_size  # Composer sizes eval microbatches from it

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        split = len(self.loader) < self.num_batches
        for i, batch in enumerate(self.loader):
            if split and i == len(self.loader) - 1:
                yield tuple(t[:-1] for t in batch)
                yield tuple(t[-1:] for t in batch)
            else:
                yield batch
