"""Linear mode connectivity between IMP solutions (the paper's §2.1, Figure 2, Definition A.1).

All evaluation goes through :func:`composer_imp.evaluate.evaluate`, the same primitive the adaptive sweep uses.

Example:
    >>> error_barrier([0.10, 0.30, 0.12], [0.0, 0.5, 1.0])
    0.19
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from composer.models import ComposerModel

from composer_imp.evaluate import evaluate, interpolate

__all__ = ['error_barrier', 'linear_path', 'DEFAULT_BETAS']

DEFAULT_BETAS = tuple(round(0.1 * i, 1) for i in range(11))


def error_barrier(errors: Sequence[float], betas: Sequence[float]) -> float:
    """Definition A.1: the smallest ε with E(path(β)) ≤ (1-β) E(0) + β E(1) + ε for every β on the grid.

    ``errors[i]`` is the error at ``betas[i]``; the grid must contain 0 and 1 (the endpoints).
    """
    if len(errors) != len(betas):
        raise ValueError(f'{len(errors)} errors for {len(betas)} betas.')
    points = dict(zip((float(b) for b in betas), errors))
    if 0.0 not in points or 1.0 not in points:
        raise ValueError('The beta grid must contain the endpoints 0.0 and 1.0.')
    e0, e1 = points[0.0], points[1.0]
    return round(max(e - ((1 - b) * e0 + b * e1) for b, e in points.items()), 12)


def linear_path(
    model: ComposerModel,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    batches: Sequence,
    betas: Sequence[float] = DEFAULT_BETAS,
    recalibrate_bn: bool = False,
    recalibration_batches: Optional[Sequence] = None,
) -> dict:
    """Loss and error along ``(1-β) a + β b``; returns ``{'betas', 'errors', 'losses', 'barrier', 'max_error'}``."""
    results = evaluate(model, interpolate(a, b, betas), batches, recalibrate_bn, recalibration_batches)
    errors = [r['error'] for r in results]
    return {'betas': [float(x) for x in betas], 'errors': errors, 'losses': [r['loss'] for r in results],
            'barrier': error_barrier(errors, betas), 'max_error': max(errors)}
