"""MosaicML Streaming: MDS shards of undecoded uint8 images, read back with the same normalization and
augmentation as the in-memory loaders.

Layout written by :func:`write_mds` (and ``python -m composer_imp.data.convert``)::

    OUT/train/  index.json + shards     columns: image (ndarray:uint8, C×H×W), label (int)
    OUT/val/    index.json + shards

Read with ``data: {name: streaming, local: OUT, kind: cifar10}`` (or ``remote: s3://bucket/OUT`` plus a
``local`` cache folder). Streaming partitions samples over ranks itself and its state travels in
Composer checkpoints, so a level resumed mid-epoch continues from the exact sample without re-reading
the earlier batches of the epoch. Evaluation reads the val shards by index (:class:`ByIndex`) through
Composer's distributed sampler, so every eval example counts exactly once whatever the world size. Each process builds the datasets once: Streaming refuses a second
instance on the same local folder while the first lives.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from composer_imp.data.normalization import NORMALIZATION

__all__ = ['write_mds', 'streaming_datasets', 'ByIndex', 'KINDS']

# kind -> (mean, std) per channel for normalization, and whether training augments (crop 4 + flip)
KINDS = {kind: (*NORMALIZATION[kind], augment) for kind, augment in (('cifar10', True), ('cifar100', True), ('fashion_mnist', False))}


def write_mds(images: np.ndarray, labels: np.ndarray, out: str, compression: Optional[str] = None) -> int:
    """Write uint8 images (N, C, H, W) and integer labels as MDS shards into ``out``; returns the sample count."""
    from streaming import MDSWriter

    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f'write_mds needs uint8 images of shape (N, C, H, W) and N labels; got {images.dtype} {images.shape}, {len(labels)} labels.')
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f'{out} is not empty; refusing to overwrite MDS shards. Remove it or choose another --out.')
    with MDSWriter(out=out, columns={'image': 'ndarray:uint8', 'label': 'int'}, compression=compression) as writer:
        for image, label in zip(images, labels):
            writer.write({'image': np.ascontiguousarray(image), 'label': int(label)})
    return len(labels)


def _dataset_class():
    from streaming import StreamingDataset

    class StreamingImages(StreamingDataset):
        """Decodes ``image``/``label`` samples into normalized float tensors (augmented for training)."""

        def __init__(self, kind: str, train: bool, **kwargs):
            super().__init__(**kwargs)
            mean, std, augment = KINDS[kind]
            self.mean = torch.tensor(mean).view(-1, 1, 1)
            self.std = torch.tensor(std).view(-1, 1, 1)
            self.augment = augment and train

        def __getitem__(self, idx: int):
            return self.decode(idx, self.augment)

        def decode(self, idx: int, augment: bool):
            sample = super().__getitem__(idx)
            x = torch.from_numpy(np.array(sample['image'])).float() / 255.0
            if augment:
                # Crop and flip drawn from (seed, epoch, sample), not the global RNG: a level resumed mid-epoch
                # from a checkpoint augments exactly like the uninterrupted run, whatever the workers and ranks.
                epoch = max(int(self.next_epoch) - 1, 0)  # Streaming counts epochs as it starts them
                rng = torch.Generator().manual_seed(int((int(self.shuffle_seed) * 1_000_003 + epoch) * 1_000_033 + int(idx)) % 2**62)
                h, w = x.shape[-2:]
                x = torch.nn.functional.pad(x, (4, 4, 4, 4))
                top, left = torch.randint(0, 9, (2,), generator=rng).tolist()
                x = x[:, top:top + h, left:left + w]
                if torch.rand((), generator=rng) < 0.5:
                    x = x.flip(-1)
            return (x - self.mean) / self.std, torch.tensor(sample['label'], dtype=torch.long)

        def by_index(self) -> 'ByIndex':
            # A view, not a second StreamingDataset: Streaming refuses two instances on one local folder.
            return ByIndex(self)

        without_augmentation = by_index

    return StreamingImages


class ByIndex(torch.utils.data.Dataset):
    """Map-style random access to every sample of a :class:`StreamingDataset`, decoded without augmentation.

    Evaluation reads the val shards through this view with Composer's ``DistributedSampler``: Streaming's own
    partitioning repeats samples to even out ranks, which Composer cannot trim, so an eval set that does not
    divide by the world size would count some examples twice. The sweep's fixed subsample uses it too.
    """

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return self.base.num_samples  # all ranks' samples (len() of a StreamingDataset is this rank's share)

    def __getitem__(self, idx: int):
        return self.base.decode(idx, augment=False)


def streaming_datasets(local: str, remote: Optional[str] = None, kind: str = 'cifar10', shuffle_seed: int = 9176,
                       batch_size: Optional[int] = None, eval_batch_size: Optional[int] = None):
    """(train, val) StreamingDatasets over ``local``/``remote`` ``train/`` and ``val/`` MDS folders."""
    if kind not in KINDS:
        raise ValueError(f'data.kind={kind!r} is not a known kind of MDS images; known: {", ".join(KINDS)}.')
    if remote is None:
        missing = [s for s in ('train', 'val') if not os.path.isfile(os.path.join(local, s, 'index.json'))]
        if missing:
            raise FileNotFoundError(
                f'No MDS shards at data.local={local!r}: {", ".join(os.path.join(local, s, "index.json") for s in missing)} '
                'missing. Write them with `python -m composer_imp.data.convert --dataset cifar10 --data-root DIR --out '
                f'{local}`, or set data.remote to where they are stored (then data.local is the cache folder).',
            )
    cls = _dataset_class()

    def make(split: str, train: bool):
        return cls(kind, train, local=os.path.join(local, split), remote=None if remote is None else f'{remote.rstrip("/")}/{split}',
                   shuffle=train, shuffle_seed=shuffle_seed, batch_size=batch_size if train else (eval_batch_size or batch_size))

    return make('train', True), make('val', False).by_index()
