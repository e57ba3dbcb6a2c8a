"""The training data order across levels, replicates and controls.

Loaders are usually built once and reused by every level's Trainer. Two things must then be set on them before
each ``fit``, whatever built them (the YAML runner or a user's script):

* :func:`reseed_data_order`: a replicate, a level (with ``IMP(data_order='new')``, the default) or a control
  draws its own data order (:func:`branch_data_seed` names which). Samplers draw an epoch's order
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

__all__ = ['reseed_data_order', 'restart_epoch_counters', 'forget_resumed_position', 'release_workers', 'branch_data_seed',
           'ShiftCheckpointedOrder', 'SEED_STRIDE', 'LEVEL_STRIDE', 'DATA_ORDERS']

SEED_STRIDE = 1_000_003
LEVEL_STRIDE = 1000  # data seeds of a run's branches: replicate i (< 1000) at level L draws i + 1000 (L + 1)
DATA_ORDERS = ('new', 'replay')
_BASE = '_composer_imp_base_seed'  # the seed the loader's order object was built with


def _set(order: Any, attribute: str, offset: int) -> None:
    base_name = f'{_BASE}_{attribute}'
    if not hasattr(order, base_name):
        setattr(order, base_name, getattr(order, attribute))
    setattr(order, attribute, getattr(order, base_name) + offset)


def branch_data_seed(data_seed: int, level: int, data_order: str) -> int:
    """The data seed a branch from the rewind point trains level ``level`` with, in the run of ``data_seed``.

    ``'new'`` (OpenLTH: its data-order seed is unset by default, so every training draws a new order): each level
    draws its own order, the same on a re-run. ``'replay'``: every level continues the pretraining's order from τ
    (with the RNG state saved at τ, so augmentation draws repeat too).

    Example:
        >>> branch_data_seed(0, 3, 'new'), branch_data_seed(2, 3, 'new'), branch_data_seed(2, 3, 'replay')
        (4000, 4002, 2)
    """
    if data_order not in DATA_ORDERS:
        raise ValueError(f'data_order must be one of {list(DATA_ORDERS)}; got {data_order!r}.')
    return data_seed if data_order == 'replay' else data_seed + LEVEL_STRIDE * (level + 1)


class ShiftCheckpointedOrder:
    """``Trainer(load_ignore_keys=...)`` hook: moves the data order a checkpoint carries by ``shift`` data seeds.

    MosaicML Streaming keeps its ``shuffle_seed`` in the dataset state Composer checkpoints, and takes it back on
    resumption; a branch loading the rewind point with another order keeps the position, with its own seed. Loaders
    whose order is not in the checkpoint (samplers, FFCV) are reseeded by :func:`reseed_data_order` alone.

    Example:
        >>> checkpoint = {'state': {'dataset_state': {'train': {'epoch': 1, 'shuffle_seed': 9}}}}
        >>> ShiftCheckpointedOrder(2)(checkpoint); checkpoint['state']['dataset_state']['train']['shuffle_seed']
        2000015
    """

    def __init__(self, shift: int):
        self.shift = int(shift)

    def __call__(self, state_dict: dict) -> None:
        train = ((state_dict.get('state') or {}).get('dataset_state') or {}).get('train')
        if isinstance(train, dict) and 'shuffle_seed' in train:
            train['shuffle_seed'] = train['shuffle_seed'] + self.shift * SEED_STRIDE


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


def forget_resumed_position(loader: Any) -> None:
    """Make a MosaicML Streaming dataset start its next epoch at the beginning.

    Streaming keeps the last position it was told to resume from in shared memory for the whole process, and takes
    it up whenever its epoch counter is not past it. A training that restores no position (the pretraining of the
    next replicate, after levels that resumed from the rewind point) must not inherit it: the position is replaced
    by one from before epoch 0, which Streaming discards as stale.
    """
    dataset = getattr(loader, 'dataset', None)
    if hasattr(dataset, 'shuffle_seed') and hasattr(dataset, 'load_state_dict'):
        dataset.load_state_dict({'epoch': -1, 'sample_in_epoch': 0, 'shuffle_seed': dataset.shuffle_seed,
                                 'num_canonical_nodes': dataset.num_canonical_nodes,
                                 'initial_physical_nodes': dataset.initial_physical_nodes})


def release_workers(loader: Any) -> None:
    """Shut down a torch ``DataLoader``'s persistent workers and drop its iterator: the next Trainer built on the
    same loader must not find an active iterator (Composer refuses one), and new workers see new seeds."""
    iterator = getattr(loader, '_iterator', None)
    if iterator is not None and hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()
        loader._iterator = None
