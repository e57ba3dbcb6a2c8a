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

__all__ = ['error_barrier', 'iff_verdict', 'in_lcs_set', 'linear_path', 'plane_point', 'plane_slice', 'DEFAULT_BETAS']

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


def in_lcs_set(values: Sequence[float], epsilon: float) -> bool:
    """Definition 2.1: is the end of a linear path from ``w`` in the ε-LCS-set of ``w``?

    ``values``: error (or loss) along the path from ``w`` (first) to ``w'`` (last). ``w'`` is in the set when it is
    within ``E(w) + ε`` *and* so is every point of the line between them (no barrier above ``E(w) + ε``).

    Example:
        >>> in_lcs_set([0.10, 0.104, 0.108], 0.01), in_lcs_set([0.10, 0.13, 0.105], 0.01)
        (True, False)
    """
    return max(values) <= values[0] + epsilon


def iff_verdict(successive: Sequence[Mapping]) -> dict:
    """"Connected iff matching" judged as the paper states it (§2.1): over successive pairs of *pruned* levels
    (L ≥ 1 → L + 1). The dense → level-1 pair is reported on its own line: the paper notes that levels 0 and 1 may
    not be connected when the dense network is not yet stable at τ (Appendix D; only CIFAR-10 extends to level 0).

    ``successive``: ``[{'from', 'to', 'connected', 'both_matching'}]``. Returns ``{'holds': bool, or None while no
    pair of pruned levels exists, 'pairs': [{'from', 'to', 'matching', 'connected', 'agree'}] for L ≥ 1,
    'dense_pair': the same row for 0 → 1, or None}``.
    """
    rows = [{'from': s['from'], 'to': s['to'], 'matching': s['both_matching'], 'connected': s['connected'],
             'agree': s['connected'] == s['both_matching']} for s in successive]
    pruned = [r for r in rows if r['from'] >= 1]
    return {'holds': all(r['agree'] for r in pruned) if pruned else None, 'pairs': pruned,
            'dense_pair': next((r for r in rows if r['from'] == 0), None)}


def linear_path(
    model: ComposerModel,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    batches: Sequence,
    betas: Sequence[float] = DEFAULT_BETAS,
    recalibrate_bn: bool = False,
    recalibration_batches: Optional[Sequence] = None,
    all_reduce: bool = False,
) -> dict:
    """Loss and error along ``(1-β) a + β b``; returns ``{'betas', 'errors', 'losses', 'barrier', 'max_error'}``.

    ``all_reduce``: ``batches`` is this rank's share of the data (see :func:`composer_imp.evaluate.evaluate`).
    """
    results = evaluate(model, interpolate(a, b, betas), batches, recalibrate_bn, recalibration_batches, all_reduce)
    errors = [r['error'] for r in results]
    return {'betas': [float(x) for x in betas], 'errors': errors, 'losses': [r['loss'] for r in results],
            'barrier': error_barrier(errors, betas), 'max_error': max(errors)}


def _closest_in_triangle(a: float, b: float) -> tuple[float, float]:
    """Closest point of the triangle {a, b >= 0, a + b <= 1} to (a, b) in plane coordinates."""
    if a >= 0 and b >= 0 and a + b <= 1:
        return a, b
    candidates = []
    for (x0, y0), (x1, y1) in (((0, 0), (1, 0)), ((0, 0), (0, 1)), ((1, 0), (0, 1))):
        dx, dy = x1 - x0, y1 - y0
        t = min(1.0, max(0.0, ((a - x0) * dx + (b - y0) * dy) / (dx * dx + dy * dy)))
        px, py = x0 + t * dx, y0 + t * dy
        candidates.append(((px - a) ** 2 + (py - b) ** 2, px, py))
    _, px, py = min(candidates)
    return px, py


def plane_point(
    origin: Mapping[str, torch.Tensor],
    u_end: Mapping[str, torch.Tensor],
    v_end: Mapping[str, torch.Tensor],
    a: float,
    b: float,
    prunable: set,
) -> dict[str, torch.Tensor]:
    """``origin + a (u_end - origin) + b (v_end - origin)``, the paper's rule outside the convex hull.

    Inside the triangle of the three networks everything is interpolated. Outside it (Appendix C) only the
    prunable weights extrapolate; every other tensor (biases, normalization, buffers) takes its value at the
    closest point of the triangle (closest in plane coordinates).
    """
    ca, cb = _closest_in_triangle(a, b)
    out = {}
    for k, o in origin.items():
        if not o.is_floating_point():
            out[k] = o
            continue
        x, y = (a, b) if k in prunable else (ca, cb)
        out[k] = o + x * (u_end[k] - o) + y * (v_end[k] - o)
    return out


def plane_slice(
    model: ComposerModel,
    origin: Mapping[str, torch.Tensor],
    u_end: Mapping[str, torch.Tensor],
    v_end: Mapping[str, torch.Tensor],
    batches: Sequence,
    prunable: set,
    grid: int = 51,
    span: tuple[float, float] = (-0.25, 1.25),
    chunk: int = 32,
    recalibrate_bn: bool = False,
    recalibration_batches: Optional[Sequence] = None,
    all_reduce: bool = False,
) -> dict:
    """Test error on a ``grid × grid`` slice of the plane through three networks (Figure 3 of the paper).

    Coordinates: ``origin`` at (0, 0), ``u_end`` at (1, 0), ``v_end`` at (0, 1). Points are evaluated
    ``chunk`` at a time through :func:`composer_imp.evaluate.evaluate` (one pass over the data per chunk); with
    ``all_reduce`` under Composer's launcher each rank evaluates every point on its share of the data.
    """
    coords = [span[0] + (span[1] - span[0]) * i / (grid - 1) for i in range(grid)]
    errors = [[0.0] * grid for _ in range(grid)]
    cells = [(i, j) for j in range(grid) for i in range(grid)]
    for start in range(0, len(cells), chunk):
        part = cells[start:start + chunk]
        points = [plane_point(origin, u_end, v_end, coords[i], coords[j], prunable) for i, j in part]
        for (i, j), r in zip(part, evaluate(model, points, batches, recalibrate_bn, recalibration_batches, all_reduce)):
            errors[j][i] = r['error']
    return {'alphas': coords, 'betas': coords, 'errors': errors}
