"""Training faults that must stop a level loudly instead of corrupting the run.

:class:`LossGuard` stops a level at the first NaN or infinite training loss, naming the level, the step
and the last finite loss. Everything written before (finished levels, the rewind point) stays intact;
the diverged level leaves no ``level.json``, so it counts as not done.

Example:
    >>> trainer = Trainer(..., callbacks=[LossGuard(level=3)])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional

from composer.core import Callback, State
from composer.loggers import Logger

__all__ = ['LossGuard', 'TrainingDiverged']


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class LossGuard(Callback):
    """Raise :class:`TrainingDiverged` at the first non-finite training loss (the all-reduced global loss)."""

    def __init__(self, level: Optional[int] = None):
        self.level = level
        self.last_finite: Optional[tuple[int, float]] = None

    def batch_end(self, state: State, logger: Logger) -> None:
        loss = state.total_loss_dict.get('loss/train/total')
        if loss is None:
            return
        step = int(state.timestamp.batch)
        if math.isfinite(loss):
            self.last_finite = (step, float(loss))
            return
        where = f'level {self.level:02d}' if self.level is not None else 'training'
        last = (f'the last finite loss was {self.last_finite[1]:.6g} at step {self.last_finite[0]}'
                if self.last_finite else 'no finite loss was seen before')
        raise TrainingDiverged(
            f'{where}: the training loss became {loss} at step {step}; {last}. Earlier levels are kept. '
            'Lower the learning rate (or add warm-up / gradient clipping) and start over with --overwrite, '
            'or use another save_folder.',
        )
