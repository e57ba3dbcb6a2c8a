"""The paper's judgements, defined once: matching, linearly connected, ε, LCS-set membership, "connected iff matching".

Every verdict in the project (the level loop's closing line, the analysis of a run, the replicate analysis, the
benchmarks) goes through these functions, so a threshold and the quantity compared with it cannot drift apart.

* **matching** (Appendix A): a level's error is at most the dense error + the tolerance.
* **connected** (Definition A.1): the error barrier on the linear path is at most the tolerance.
* **ε** (Appendix A): the standard deviation of the dense test error across replicates (``N - 1`` in the
  denominator); :func:`epsilon` also gives its confidence interval (chi-square), since 3–5 seeds place it loosely.
* **LCS-set** (Definition 2.1): ``w'`` is in the ε-LCS-set of ``w`` when every point of the line from ``w`` to ``w'``
  is within ``E(w) + ε``; :func:`in_lcs_set` also takes another reference value (the dense matching threshold).

A single run has no replicates to estimate ε from: :data:`DEFAULT_TOLERANCE` (one point of error) is used, as the
paper's "within one standard deviation" cannot be measured from one seed.

Example:
    >>> is_matching(0.105, dense_error=0.10, tolerance=0.01), is_connected(0.02, tolerance=0.01)
    (True, False)
    >>> round(epsilon([0.10, 0.11, 0.12])['value'], 3)
    0.01
"""

from __future__ import annotations

import math
import statistics
from typing import Mapping, Optional, Sequence

from scipy import stats as scipy_stats

__all__ = ['DEFAULT_TOLERANCE', 'is_matching', 'is_connected', 'epsilon', 'in_lcs_set', 'iff_verdict']

# One point of error: the tolerance of a single run (no replicates to estimate ε from).
DEFAULT_TOLERANCE = 0.01
# Ties count: errors come from float32 metrics (358/360 is not exact); 1e-6 is one example in a million.
_SLACK = 1e-6


def is_matching(error: float, dense_error: float, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Appendix A: a network matches when its error is at most the dense network's error + ``tolerance``."""
    return error <= dense_error + tolerance + _SLACK


def is_connected(barrier: float, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Definition A.1: two networks are linearly connected when the error barrier between them is at most
    ``tolerance``."""
    return barrier <= tolerance + _SLACK


def epsilon(dense_errors: Sequence[float], confidence: float = 0.95) -> dict:
    """ε, the standard deviation of the dense error across replicates, with its ``confidence`` interval.

    Returns ``{'value', 'low', 'high', 'confidence', 'replicates'}``; the interval is the chi-square interval of a
    normal sample's standard deviation (``None`` bounds with fewer than two replicates).
    """
    values = [float(v) for v in dense_errors]
    n = len(values)
    if n < 2:
        raise ValueError(f'ε is the standard deviation of the dense error across replicates and needs at least 2; '
                         f'got {n}. Train replicates (replicates=N) or give a tolerance.')
    value = statistics.stdev(values)
    alpha = 1.0 - confidence
    low = value * math.sqrt((n - 1) / scipy_stats.chi2.ppf(1 - alpha / 2, n - 1))
    high = value * math.sqrt((n - 1) / scipy_stats.chi2.ppf(alpha / 2, n - 1))
    return {'value': value, 'low': low, 'high': high, 'confidence': confidence, 'replicates': n}


def in_lcs_set(values: Sequence[float], epsilon: float, reference: Optional[float] = None) -> bool:
    """Definition 2.1: is the end of a linear path from ``w`` in the ε-LCS-set of ``w``?

    ``values``: error (or loss) along the path from ``w`` (first) to ``w'`` (last). ``w'`` is in the set when every
    point of the line is within ``reference + ε``; ``reference`` defaults to ``E(w)`` (``values[0]``, Definition
    2.1's own). Pass the dense error to judge against the matching threshold instead.

    Example:
        >>> in_lcs_set([0.10, 0.104, 0.108], 0.01), in_lcs_set([0.10, 0.13, 0.105], 0.01)
        (True, False)
    """
    base = values[0] if reference is None else reference
    return max(values) <= base + epsilon + _SLACK


def iff_verdict(successive: Sequence[Mapping]) -> dict:
    """"Connected iff matching" judged as the paper states it (§2.1): over successive pairs of *pruned* levels
    (L ≥ 1 → L + 1). The dense → level-1 pair is reported on its own line: the paper notes that levels 0 and 1 may
    not be connected when the dense network is not yet stable at τ (Appendix D).

    ``successive``: ``[{'from', 'to', 'connected', 'both_matching'}]``. Returns ``{'holds': bool, or None while no
    pair of pruned levels exists, 'pairs': [{'from', 'to', 'matching', 'connected', 'agree'}] for L ≥ 1,
    'dense_pair': the same row for 0 → 1, or None}``.
    """
    rows = [{'from': s['from'], 'to': s['to'], 'matching': s['both_matching'], 'connected': s['connected'],
             'agree': s['connected'] == s['both_matching']} for s in successive]
    pruned = [r for r in rows if r['from'] >= 1]
    return {'holds': all(r['agree'] for r in pruned) if pruned else None, 'pairs': pruned,
            'dense_pair': next((r for r in rows if r['from'] == 0), None)}
