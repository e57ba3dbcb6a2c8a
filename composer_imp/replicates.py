"""Replicates: N seeds of a whole IMP run, analysed together (the paper's matching criterion, Appendix A).

``find_ticket(..., replicates=N)`` (``replicates: N`` in a recipe) trains N independent IMP runs with seeds
``seed, seed + 1, …`` and their own data orders in ``SAVE_FOLDER/replicate_00 … replicate_{N-1}`` (each a
complete, resumable run); :func:`analyze_replicates` analyses them together:

* ε = the standard deviation (``statistics.stdev``, N - 1 in the denominator) of the dense test error across
  replicates; the matching tolerance of every replicate's analysis unless a tolerance is given.
* per level: test error and weights remaining as mean ± std over replicates; the level is **matching** when its
  mean error is at most the mean dense error + ε, and ``matching_fraction`` says in how many replicates it was.
* per successive pair: the error barrier as mean ± std; **connected** when the mean barrier is at most ε.

Writes ``SAVE_FOLDER/analysis/replicates.json``, ``replicates.png`` and ``replicates.md`` (each replicate keeps its
own ``analysis/``). ``python -m composer_imp.analyze SAVE_FOLDER`` on such a folder does the same.

``replicates.json`` schema::

    {"settings": {"tolerance": float | null, "betas", "recalibrate_bn", "pairwise", "plane_grid"},
     "replicates": [str], "seeds": [int], "epsilon": float, "tolerance": float,
     "epsilon_interval": {"low", "high", "confidence"},   # chi-square interval of ε (composer_imp.criteria)
     "dense_error": {"mean", "std", "values"},
     "levels": [{"level", "weights_remaining": {"mean", "std", "values"}, "error": {"mean", "std", "values"},
                 "matching": bool, "matching_fraction": float}],
     "successive": [{"from", "to", "barrier": {"mean", "std", "values"}, "connected": bool,
                     "connected_fraction": float, "both_matching": bool,
                     "betas": [float], "errors": [{"mean", "std", "values"}]}],   # per β: Figure 2 left / middle
     "pairwise": {"levels": [int], "max_error": [[float|null]], "barrier": [[float|null]]},   # means over replicates
     "verdict": {...}, "connected_iff_matching": bool | null}   # as in analysis.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Any, Optional, Sequence

import torch
from composer.utils import dist

from composer_imp.analysis import LandscapeSettings, analyze_run, refuse_changed_settings
from composer_imp.criteria import epsilon as estimate_epsilon
from composer_imp.criteria import iff_verdict, is_connected, is_matching
from composer_imp.rank_zero import held_on_rank0
from composer_imp.run_folder import RunFolder, atomic_write_text
from composer_imp.plots import plot_replicates

__all__ = ['analyze_replicates', 'stats']


def stats(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values: how replicates are summarized."""
    values = [float(v) for v in values]
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'values': values}


def analyze_replicates(save_folder: str, model: torch.nn.Module, eval_dataloader: Any, train_data: Any = None,
                       settings: Optional[LandscapeSettings] = None, overwrite: bool = False) -> dict:
    """Analyse every replicate of ``save_folder`` with tolerance ε (or ``tolerance``) and aggregate; see the module doc.

    ``model``, ``eval_dataloader``, ``train_data``, ``settings``: as :func:`~composer_imp.analysis.analyze_run`.
    """
    settings = settings or LandscapeSettings()
    with held_on_rank0(RunFolder(save_folder).lock('analysis')):
        return _analyze_replicates(save_folder, model, eval_dataloader, train_data, settings, overwrite)


def _analyze_replicates(save_folder: str, model: torch.nn.Module, eval_dataloader: Any, train_data: Any,
                        settings: LandscapeSettings, overwrite: bool) -> dict:
    out = RunFolder(save_folder).analysis_dir
    recorded = settings.record(settings.tolerance)
    if not overwrite:
        refuse_changed_settings(RunFolder(save_folder).replicates_json, recorded, save_folder)
    folders = [f.root for f in RunFolder(save_folder).replicates()]
    if len(folders) < 2:
        raise ValueError(f'{save_folder} holds {len(folders)} replicate run(s) (replicate_XX/config.yaml); the '
                         'replicate analysis needs at least 2 (train them with replicates=N).')
    for folder in folders:
        if not RunFolder(folder).is_done(0):
            raise ValueError(f'{folder} has no finished dense level (level_00); finish its training first '
                             '(re-run the same command: replicates resume).')
    # ε comes from the same evaluator that judges the levels: the dense test error of each replicate's analysis.
    # Each replicate's analysis follows this one: its tolerance moves with ε as replicates are added (the cached
    # evaluations do not depend on it), so it is rewritten rather than refused; the second pass reads the cache.
    per_run = [analyze_run(f, model, eval_dataloader, train_data, settings, True) for f in folders]
    estimate = estimate_epsilon([a['levels'][0]['error'] for a in per_run])
    epsilon = estimate['value']
    tol = epsilon if settings.tolerance is None else float(settings.tolerance)
    judged = dataclasses.replace(settings, tolerance=tol)
    per_run = [analyze_run(f, model, eval_dataloader, train_data, judged, True) for f in folders]

    # Every replicate's levels run 0, 1, 2, ... (levels_done is contiguous): aggregate over the levels all have.
    common = range(min(len(a['levels']) for a in per_run))
    dense_error = stats([a['levels'][0]['error'] for a in per_run])
    level_rows = []
    for level in common:
        rows = [a['levels'][level] for a in per_run]
        error = stats([r['error'] for r in rows])
        level_rows.append({'level': level, 'weights_remaining': stats([r['weights_remaining'] for r in rows]),
                           'error': error, 'matching': is_matching(error['mean'], dense_error['mean'], tol),
                           'matching_fraction': sum(r['matching'] for r in rows) / len(rows)})
    matching = {r['level']: r['matching'] for r in level_rows}
    successive = []
    for a in common[:-1]:
        paths = [run['successive'][a] for run in per_run]  # the path from level a to a + 1
        barrier = stats([p['barrier'] for p in paths])
        successive.append({'from': a, 'to': a + 1, 'barrier': barrier, 'connected': is_connected(barrier['mean'], tol),
                           'connected_fraction': sum(p['connected'] for p in paths) / len(paths),
                           'both_matching': matching[a] and matching[a + 1], 'betas': paths[0]['betas'],
                           # Figure 2 (left, middle): the error along the path at each β, mean ± std over replicates
                           'errors': [stats(errors) for errors in zip(*(p['errors'] for p in paths))]})
    n = len(common)
    # Appendix C's heatmap: the maximum error along the path between two levels, averaged over replicates.
    pairwise = {key: [[_mean_or_none([a['pairwise'][key][i][j] for a in per_run]) for j in range(n)] for i in range(n)]
                for key in ('max_error', 'barrier')}
    verdict = iff_verdict(successive)
    result = {
        'settings': recorded,
        'replicates': [os.path.basename(f) for f in folders],
        'seeds': [_seed(f) for f in folders],
        'epsilon': epsilon, 'epsilon_interval': {k: estimate[k] for k in ('low', 'high', 'confidence')},
        'tolerance': tol, 'dense_error': dense_error,
        'levels': level_rows, 'successive': successive, 'pairwise': {'levels': list(common), **pairwise},
        'verdict': verdict, 'connected_iff_matching': verdict['holds'],
    }
    if dist.get_global_rank() == 0:
        os.makedirs(out, exist_ok=True)
        atomic_write_text(json.dumps(result, indent=2), RunFolder(save_folder).replicates_json)
        plot_replicates(result, out)
    return result


def _mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    return None if any(v is None for v in values) else statistics.fmean(values)


def _seed(folder: str) -> Optional[int]:
    return RunFolder(folder).read_config().get('seed')
