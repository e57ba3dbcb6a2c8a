"""The training data order across levels, replicates and controls.

Loaders are usually built once and reused by every level's Trainer. Two things must then be set on them before
each ``fit``, whatever built them (the YAML runner or a user's script):

* :func:`reseed_data_order`: a replicate (or a control) draws its own data order. Samplers draw an epoch's order
  from ``(seed + epoch)``; the seed moves by a large stride per unit of seed, so replicate ``i`` at epoch ``e``
  never replays replicate 0 at epoch ``e + i``. The loader's own seed is remembered on first sight, so setting
  a seed is idempotent (level after level on the same loader).
* :func:`restart_epoch_counters`: loaders that count their own epochs (MosaicML Streaming's ``next_epoch``,
  FFCV's loader) start each level at 0, so the position restored from the rewind checkpoint is not discarded
  as stale (Streaming) and Composer's spinning to τ's epoch lands on the dense run's epoch order (FFCV).

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    >>> data = TensorDataset(torch.arange(8))
    >>> loader = DataLoader(data, sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=5))
    >>> reseed_data_order(loader, 2); loader.sampler.seed
    2000011
    >>> reseed_data_order(loader, 0); loader.sampler.seed
    5
"""

from __future__ import annotations

from typing import Any

__all__ = ['reseed_data_order', 'restart_epoch_counters', 'release_workers', 'SEED_STRIDE']

SEED_STRIDE = 1_000_003
_BASE = '_composer_imp_base_seed'  # the seed the loader's order object was built with


def _set(order: Any, attribute: str, offset: int) -> None:
    base_name = f'{_BASE}_{attribute}'
    if not hasattr(order, base_name):
        setattr(order, base_name, getattr(order, attribute))
    setattr(order, attribute, getattr(order, base_name) + offset)


def reseed_data_order(loader: Any, data_seed: int) -> None:
    """Make ``loader`` draw the data order of ``data_seed`` (0: the order it was built with).

    Understands Composer's / torch's ``DistributedSampler`` (``sampler.seed``), MosaicML Streaming
    (``dataset.shuffle_seed``) and FFCV (``traversal_order.seed`` and its per-rank sampler). Persistent loader
    workers hold copies made with the old seeds and are restarted.
    """
    offset = int(data_seed) * SEED_STRIDE
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'seed'):
        _set(sampler, 'seed', offset)
    dataset = getattr(loader, 'dataset', None)
    if hasattr(dataset, 'shuffle_seed'):
        _set(dataset, 'shuffle_seed', offset)
    order = getattr(loader, 'traversal_order', None)
    if getattr(order, 'seed', None) is not None:
        _set(order, 'seed', offset)
        if getattr(order, 'sampler', None) is not None:
            _set(order.sampler, 'seed', offset)
    release_workers(loader)


def restart_epoch_counters(*loaders: Any) -> None:
    """Set the epoch counters of loaders that keep their own (Streaming datasets, FFCV loaders) back to 0."""
    for loader in loaders:
        for counter in (getattr(loader, 'dataset', None), loader):
            if counter is not None and hasattr(counter, 'next_epoch'):
                counter.next_epoch = 0


def release_workers(loader: Any) -> None:
    """Shut down a torch ``DataLoader``'s persistent workers and drop its iterator: the next Trainer built on the
    same loader must not find an active iterator (Composer refuses one), and new workers see new seeds."""
    iterator = getattr(loader, '_iterator', None)
    if iterator is not None and hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()
        loader._iterator = None
