"""ε for AdaptiveIMP: the per-batch training losses of the last epoch (§2.2 of the paper).

:class:`LossStatistics` records the all-reduced training loss of every batch of the last full epoch; ``epsilon``
is their standard deviation, ``train_loss_mean`` their mean. :class:`~composer_imp.imp.IMP` runs it at every level
and the level row records both.

Example:
    >>> stats = LossStatistics()
    >>> stats.load_state_dict({'current': [], 'last_epoch': [1.0, 2.0, 3.0]})
    >>> stats.result()['epsilon']
    1.0
"""

from __future__ import annotations

import torch
from composer.core import Callback, State
from composer.loggers import Logger

__all__ = ['LossStatistics']


class LossStatistics(Callback):
    """Records per-batch training losses of the last full epoch: ``mean`` and ``std`` (= ε) after fit."""

    def __init__(self):
        self.current: list[float] = []
        self.last_epoch: list[float] = []

    def epoch_start(self, state: State, logger: Logger) -> None:
        self.current = []  # Composer fires EPOCH_START only at batch 0 of an epoch, also when resuming

    def batch_end(self, state: State, logger: Logger) -> None:
        # total_loss_dict is already all-reduced across ranks by the Trainer: the global batch loss.
        loss = state.total_loss_dict.get('loss/train/total')
        if loss is not None:
            self.current.append(float(loss))

    def epoch_end(self, state: State, logger: Logger) -> None:
        self.last_epoch = list(self.current)

    # Travels in Composer checkpoints, so a dense level resumed mid-epoch keeps the losses seen before.
    def state_dict(self) -> dict:
        return {'current': list(self.current), 'last_epoch': list(self.last_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.current = list(state.get('current', []))
        self.last_epoch = list(state.get('last_epoch', []))

    def result(self) -> dict:
        losses = self.last_epoch or self.current  # a run shorter than an epoch uses what it has
        t = torch.tensor(losses, dtype=torch.float64)
        return {'train_loss_mean': float(t.mean()) if len(losses) else None,
                'epsilon': float(t.std()) if len(losses) >= 2 else None,  # needs two batches
                'epsilon_batches': len(losses)}
