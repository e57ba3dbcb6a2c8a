"""The rewind point: a full Composer checkpoint of the pretraining at step τ (Algorithm 1, phase 1).

Every level, level 0 included, trains from this checkpoint with ``Trainer(load_path=..., load_weights_only=False)``
(at τ = 0, level 0 is the run from initialization itself). It restores:

* the weights ``w_τ`` (then :class:`~composer_imp.keep_mask.KeepMask` zeroes the pruned ones),
* the schedulers and the timestamp, so the learning rate continues from the *absolute* step τ,
* the optimizer state at τ; the level loop clears it on load (a fresh optimizer, as OpenLTH builds one per level)
  unless ``IMP(rewind_optimizer=True)``,
* the dataloader position; with ``IMP(data_order='replay')`` also the RNG state, so every level replays the
  pretraining's data order and augmentation draws from τ on. With ``'new'`` (the default) the checkpoint is saved
  without RNG state and each level draws its own order (:func:`~composer_imp.data_order.branch_data_seed`).

Example:
    >>> trainer = Trainer(..., callbacks=[RewindCheckpoint('2000ba', 'runs/x/rewind/rewind.pt')])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Union

from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import checkpoint, dist

__all__ = ['RewindCheckpoint', 'parse_rewind', 'rewind_batches', 'rewind_step', 'check_rewind']


def parse_rewind(rewind: Union[str, int, Time]) -> Time:
    """Parse τ: an int (batches) or a Composer time string in batches or epochs (``'2000ba'``, ``'1ep'``)."""
    if isinstance(rewind, bool):
        raise ValueError(f'rewind must be a Composer time such as "2000ba" or "1ep"; got {rewind!r}.')
    if isinstance(rewind, int):
        rewind = Time(rewind, TimeUnit.BATCH)
    elif isinstance(rewind, str):
        try:
            rewind = Time.from_timestring(rewind.strip())
        except (ValueError, TypeError) as e:
            raise ValueError(f'rewind={rewind!r} is not a Composer time string; use e.g. "2000ba" or "1ep".') from e
    if rewind.unit not in (TimeUnit.BATCH, TimeUnit.EPOCH):
        raise ValueError(f'rewind must be in batches ("ba") or epochs ("ep"); got {rewind}.')
    if rewind.value < 0:
        raise ValueError(f'rewind must be >= 0; got {rewind}.')
    return rewind


def rewind_batches(rewind: Union[str, int, Time], batches_per_epoch: int) -> int:
    """τ in optimizer steps."""
    tau = parse_rewind(rewind)
    return int(tau.value) * (batches_per_epoch if tau.unit == TimeUnit.EPOCH else 1)


def rewind_step(rewind: Union[str, int, Time], state: State) -> int:
    """τ in optimizer steps of the Trainer holding ``state`` (epochs counted with its training loader)."""
    per_epoch = int(state.dataloader_len.value) if state.dataloader_len is not None else 0
    return rewind_batches(rewind, per_epoch)


def check_rewind(rewind: Union[str, int, Time], state: State, owner: str = 'IMP') -> None:
    """Refuse (``ValueError``) a rewind step τ that is not before the Trainer's ``max_duration``."""
    tau, end = rewind_step(rewind, state), state.max_duration
    if parse_rewind(rewind).unit == TimeUnit.EPOCH and parse_rewind(rewind).value > 0 and state.dataloader_len is None:
        raise ValueError(f'{owner} rewind={rewind!r} is in epochs, but the training loader has no length; give it in '
                         'batches ("2000ba").')
    per_epoch = int(state.dataloader_len.value) if state.dataloader_len is not None else None
    total = None
    if end is not None and end.unit == TimeUnit.BATCH:
        total = int(end.value)
    elif end is not None and end.unit == TimeUnit.EPOCH and per_epoch:
        total = int(end.value) * per_epoch
    if total is not None and tau >= total:
        raise ValueError(f'{owner} rewind={rewind!r} ({tau} batches) is not before max_duration={end} ({total} '
                         'batches); choose an earlier rewind step.')


class RewindCheckpoint(Callback):
    """Save a full Composer checkpoint at step τ (``0`` means before the first step).

    Args:
        rewind: τ as an int (batches) or a time string in batches or epochs.
        path: where to write the checkpoint (rank 0 writes; every rank must run this callback).
        keep_rng: save the RNG state (``False``: runs loading it draw their own randomness).
        stop: stop training once it is saved (the pretraining phase ends at τ).
    """

    def __init__(self, rewind: Union[str, int, Time], path: str, keep_rng: bool = True, stop: bool = False):
        self.rewind = parse_rewind(rewind)
        self.path = path
        self.keep_rng = keep_rng
        self.stop = stop
        self.tau: int = -1
        self.saved = False

    def fit_start(self, state: State, logger: Logger) -> None:
        self.tau = rewind_step(self.rewind, state)  # τ before max_duration: checked by the level loop (check_rewind)
        if int(state.timestamp.batch) > self.tau and os.path.isfile(self.path):
            self.saved = True  # autoresumed past τ: the rewind point was written before the interruption
        elif self.tau == int(state.timestamp.batch):
            self._save(state)

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        if not self.saved and int(state.timestamp.batch) == self.tau:
            self._save(state)
        if self.stop and self.saved:
            state.stop_training()

    def fit_end(self, state: State, logger: Logger) -> None:
        if not self.saved:
            raise RuntimeError(
                f'The run ended at {state.timestamp.batch} before the rewind step τ={self.tau} batches: '
                'the rewind step must be earlier than max_duration.',
            )

    def _save(self, state: State) -> None:
        if dist.get_global_rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f'{self.path}.tmp{os.getpid()}.pt'  # Composer picks compression by suffix; a leftover is cleaned
        # Saving an optimizer without state (τ = 0) makes torch initialize it with a zero-grad step,
        # which fills momentum with weight_decay * w. Undo that so the checkpoint leaves training untouched;
        # levels rewound to τ = 0 skip loading optimizer state (see composer_imp.level_loop).
        stateless = [opt for opt in state.optimizers if not opt.state]
        checkpoint.save_checkpoint(state, tmp, ignore_keys=None if self.keep_rng else ['rng'])
        for opt in stateless:
            opt.state.clear()
        if dist.get_global_rank() == 0:
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # appear whole or not at all
        dist.barrier()
        self.saved = True
