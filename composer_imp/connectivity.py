"""Linear mode connectivity between IMP solutions (the paper's §2.1, Figure 2, Definition A.1).

All evaluation goes through :func:`composer_imp.evaluate.evaluate`, the same primitive the adaptive sweep uses.

Example:
    >>> error_barrier([0.10, 0.30, 0.12], [0.0, 0.5, 1.0])
    0.19
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
from composer.models import ComposerModel

from composer_imp.evaluate import evaluate, interpolate

__all__ = ['error_barrier', 'linear_path', 'PlaneFrame', 'plane_point', 'plane_slice',
           'DEFAULT_BETAS']

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
    all_reduce: bool = False,
) -> dict:
    """Loss and error along ``(1-β) a + β b``; returns ``{'betas', 'errors', 'losses', 'barrier', 'max_error'}``.

    ``all_reduce``: ``batches`` is this rank's share of the data (see :func:`composer_imp.evaluate.evaluate`).
    """
    results = evaluate(model, interpolate(a, b, betas), batches, recalibrate_bn, recalibration_batches, all_reduce)
    errors = [r['error'] for r in results]
    return {'betas': [float(x) for x in betas], 'errors': errors, 'losses': [r['loss'] for r in results],
            'barrier': error_barrier(errors, betas), 'max_error': max(errors)}


@dataclass
class PlaneFrame:
    """Orthogonal coordinates of the plane through ``w_L`` (A), its projection ``m_{L+1} ⊙ w_L`` (P) and ``w_{L+1}``
    (B), as the paper draws them (App. C, Fig. 3).

    The x axis runs along the axial line from P (0, 0) to B (1, 0): on it every coordinate that ``m_{L+1}`` prunes is
    exactly zero. The y axis is orthogonal to it, towards A at (``a_x``, ``a_y``). Lengths are in units of ``|B - P|``
    measured with the Euclidean inner product over the *prunable* weights (the coordinates the masks act on); the
    other float tensors (biases, normalization, BatchNorm buffers) follow the same affine combination inside the
    triangle P, B, A, and outside it take their value at the triangle's closest point in these orthonormal
    coordinates, i.e. the closest point in Euclidean distance over the prunable weights.
    """

    a_x: float
    a_y: float

    @staticmethod
    def of(a: Mapping[str, torch.Tensor], p: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
           prunable: set) -> 'PlaneFrame':
        def dot(x: Mapping, y: Mapping) -> float:  # in name order: the same sum in every process
            return float(sum((x[k].double() * y[k].double()).sum() for k in sorted(prunable)))

        bp = {k: b[k] - p[k] for k in prunable}
        ap = {k: a[k] - p[k] for k in prunable}
        d2 = dot(bp, bp)
        if d2 == 0:
            raise ValueError('w_L+1 equals the projection of w_L on the prunable weights: the plane is undefined.')
        a_x = dot(ap, bp) / d2
        a_y = math.sqrt(max(dot(ap, ap) / d2 - a_x ** 2, 0.0))
        if a_y == 0:
            raise ValueError('w_L lies on the axial line through its projection and w_L+1: the plane is undefined.')
        return PlaneFrame(a_x, a_y)

    def weights_of(self, x: float, y: float) -> tuple[float, float]:
        """``(s, t)`` with the point ``P + s (B - P) + t (A - P)`` at plane coordinates ``(x, y)``."""
        t = y / self.a_y
        return x - self.a_x * t, t

    def closest_in_triangle(self, x: float, y: float) -> tuple[float, float]:
        """The closest point of the triangle P, B, A to ``(x, y)`` (orthonormal coordinates)."""
        corners = ((0.0, 0.0), (1.0, 0.0), (self.a_x, self.a_y))
        s, t = self.weights_of(x, y)
        if s >= 0 and t >= 0 and s + t <= 1:
            return x, y
        best = None
        for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
            dx, dy = x1 - x0, y1 - y0
            f = min(1.0, max(0.0, ((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy)))
            px, py = x0 + f * dx, y0 + f * dy
            candidate = ((px - x) ** 2 + (py - y) ** 2, px, py)
            best = candidate if best is None or candidate < best else best
        return best[1], best[2]


def plane_point(
    p: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    a: Mapping[str, torch.Tensor],
    frame: PlaneFrame,
    x: float,
    y: float,
    prunable: set,
) -> dict[str, torch.Tensor]:
    """The network at plane coordinates ``(x, y)`` of ``frame`` (see :class:`PlaneFrame`)."""
    s, t = frame.weights_of(x, y)
    cs, ct = frame.weights_of(*frame.closest_in_triangle(x, y))
    out = {}
    for k, origin in p.items():
        if not origin.is_floating_point():
            out[k] = origin
            continue
        u, v = (s, t) if k in prunable else (cs, ct)
        # P + s (B - P) + t (A - P): where P and B are zero (the pruned coordinates) and t = 0, exactly zero.
        out[k] = origin + u * (b[k] - origin) + v * (a[k] - origin)
    return out


def plane_slice(
    model: ComposerModel,
    a: Mapping[str, torch.Tensor],
    p: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    batches: Sequence,
    prunable: set,
    grid: int = 51,
    margin: float = 0.25,
    chunk: int = 32,
    recalibrate_bn: bool = False,
    recalibration_batches: Optional[Sequence] = None,
    all_reduce: bool = False,
) -> dict:
    """Test error on a ``grid × grid`` slice of the plane through ``w_L`` (``a``), its projection (``p``) and
    ``w_{L+1}`` (``b``): Figure 3 of the paper, in the orthogonal coordinates of :class:`PlaneFrame`.

    The grid covers the three networks with ``margin`` of the extent on every side; the three networks themselves
    are evaluated exactly as ``anchors``. Points are evaluated ``chunk`` at a time through
    :func:`composer_imp.evaluate.evaluate` (one pass over the data per chunk); with ``all_reduce`` under Composer's
    launcher each rank evaluates every point on its share of the data.

    Returns ``{'xs', 'ys', 'errors' (errors[j][i] at (xs[i], ys[j])), 'anchors': {'w_L', 'projection', 'next':
    {'x', 'y', 'error'}}, 'metric': 'euclidean over prunable weights'}``.
    """
    frame = PlaneFrame.of(a, p, b, prunable)
    x0, x1 = min(0.0, frame.a_x), max(1.0, frame.a_x)
    pad_x, pad_y = margin * (x1 - x0), margin * frame.a_y
    xs = [x0 - pad_x + (x1 - x0 + 2 * pad_x) * i / (grid - 1) for i in range(grid)]
    ys = [-pad_y + (frame.a_y + 2 * pad_y) * j / (grid - 1) for j in range(grid)]
    cells = [(xs[i], ys[j]) for j in range(grid) for i in range(grid)]
    # The three networks themselves (not their plane coordinates), so their errors are exactly their own.
    anchors = {'projection': (0.0, 0.0, p), 'next': (1.0, 0.0, b), 'w_L': (frame.a_x, frame.a_y, a)}
    sets = [lambda x=x, y=y: plane_point(p, b, a, frame, x, y, prunable) for x, y in cells]
    sets += [lambda w=w: w for _, _, w in anchors.values()]
    values = []
    for start in range(0, len(sets), chunk):
        points = [make() for make in sets[start:start + chunk]]
        values += [r['error'] for r in evaluate(model, points, batches, recalibrate_bn, recalibration_batches,
                                                 all_reduce)]
    errors = [values[j * grid:(j + 1) * grid] for j in range(grid)]
    exact = values[grid * grid:]
    return {'xs': xs, 'ys': ys, 'errors': errors, 'metric': 'euclidean over prunable weights',
            'anchors': {name: {'x': x, 'y': y, 'error': e} for (name, (x, y, _)), e in zip(anchors.items(), exact)}}
