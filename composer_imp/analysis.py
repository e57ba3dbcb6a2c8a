"""Error-landscape analysis of a finished (or partial) IMP run.

Given the run folder, the run's model (as its Trainers held it, after Composer's surgery) and the eval data,
:func:`analyze_run` computes for the trained levels: test error and loss, error along the linear path between successive levels with the error barrier,
the pairwise matrix (max error on the path and barrier) over all levels, which levels are matching
(error ≤ dense error + tolerance), which successive pairs are linearly connected (barrier ≤ tolerance), and
whether "connected iff matching" holds. Writes ``SAVE_FOLDER/analysis/analysis.json``, figures and ``report.md``.

``analysis.json`` schema::

    {"settings": {"tolerance", "betas", "recalibrate_bn", "pairwise": bool, "plane_grid": int},
     "tolerance": float, "betas": [float], "recalibrate_bn": bool,
     "levels": [{"level", "weights_remaining", "error", "loss", "matching"}],
     "successive": [{"from", "to", "betas", "errors", "losses", "barrier", "max_error",
                     "connected", "both_matching"}],
     "pairwise": {"levels": [int], "max_error": [[float|null]], "barrier": [[float|null]]},
     "planes": [{"level": L, "xs": [float], "ys": [float], "errors": [[float]],   # errors[j][i] at (xs[i], ys[j])
                 "anchors": {"w_L" | "projection" | "next": {"x", "y", "error"}}, "metric"}],  # connectivity.PlaneFrame
     "verdict": {"holds": bool | null, "pairs": [{"from", "to", "matching", "connected", "agree"}],   # L >= 1
                 "dense_pair": {...} | null},                                                        # 0 -> 1
     "connected_iff_matching": bool | null,   # = verdict.holds (composer_imp.connectivity.iff_verdict)
     "lcs": [{"level": L, "train_epsilon",           # Definition 2.1 membership in the LCS-set of w_L
              "projection": {"max_error", "test": bool, "max_train_loss", "train": bool},   # m_{L+1} ⊙ w_L
              "next": {...}}]}                                                           # w_{L+1}
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from composer.utils import dist
from torch.utils.data import DataLoader, Subset

from composer_imp.connectivity import DEFAULT_BETAS, linear_path, plane_slice
from composer_imp.criteria import DEFAULT_TOLERANCE, iff_verdict, in_lcs_set, is_connected, is_matching
from composer_imp.evaluate import evaluate, fixed_subsample
from composer_imp.masks import unwrap_model
from composer_imp.plots import plot_landscape_report
from composer_imp.rank_zero import held_on_rank0, on_rank0
from composer_imp.run_folder import RunFolder, atomic_write_text

__all__ = ['analyze_run', 'LandscapeSettings', 'refuse_changed_settings']

log = logging.getLogger(__name__)

SETTINGS = ('tolerance', 'betas', 'recalibrate_bn', 'pairwise', 'plane_grid')


@dataclass
class LandscapeSettings:
    """What the landscape analysis evaluates and how it judges (the YAML ``analysis:`` section's keys).

    Attributes:
        betas: points β on every linear path (must include 0 and 1).
        tolerance: matching / connectivity tolerance in error; ``None``: :data:`~composer_imp.criteria.
            DEFAULT_TOLERANCE` (the replicate analysis passes ε).
        planes: grid size of the 2-D slices through ``w_L``, its projection and ``w_{L+1}`` (0: none; else >= 2).
        recalibrate_bn: recompute BatchNorm statistics of every evaluated network (else interpolated).
        pairwise: paths between every pair of levels, not only successive ones.
    """

    betas: Sequence[float] = DEFAULT_BETAS
    tolerance: Optional[float] = None
    recalibrate_bn: bool = False
    pairwise: bool = True
    planes: int = 0

    def __post_init__(self) -> None:
        betas = list(self.betas)
        if not betas or any(not isinstance(b, (int, float)) or isinstance(b, bool) or not 0 <= b <= 1 for b in betas):
            raise ValueError(f'betas must be points in [0, 1] on the path; got {betas}.')
        if 0.0 not in betas or 1.0 not in betas:
            raise ValueError(f'betas must include 0 and 1 (the two networks themselves); got {betas}.')
        if self.tolerance is not None and not 0 <= self.tolerance < 1:
            raise ValueError(f'tolerance={self.tolerance} must be an error difference in [0, 1), or None.')
        if isinstance(self.planes, bool) or not isinstance(self.planes, int) or self.planes < 0 or self.planes == 1:
            raise ValueError(f'planes={self.planes!r} must be 0 (no 2-D slices) or a grid size of at least 2 (the '
                             'paper: 51).')

    def record(self, tolerance: Optional[float]) -> dict:
        """The settings as ``analysis.json`` records them (with the tolerance actually used)."""
        return {'tolerance': tolerance, 'betas': sorted(set(float(b) for b in self.betas)), 'recalibrate_bn': self.recalibrate_bn,
                'pairwise': self.pairwise, 'plane_grid': self.planes}


class _Cache:
    """``analysis/cache/``: one JSON per finished evaluation (a level, a path, a plane), keyed by the settings and
    the SHA-256 of the weights it read. An interrupted analysis resumes from it; changed weights are recomputed."""

    def __init__(self, folder: str, digests: dict[int, str], settings: dict):
        self.dir = folder
        self.digests, self.settings = digests, settings
        self.reused = 0

    def _key(self, levels: Sequence[int]) -> dict:
        # 'verified': entries written since the analysis checks the weights it reads; older ones are recomputed.
        return {'settings': self.settings, 'weights': [self.digests[l] for l in levels], 'verified': True}

    def get(self, name: str, levels: Sequence[int]):
        value = None
        if dist.get_global_rank() == 0:  # rank 0 decides, so every rank takes the same branch
            try:
                with open(os.path.join(self.dir, f'{name}.json')) as f:
                    entry = json.load(f)
                value = entry['value'] if entry.get('key') == self._key(levels) else None
            except (OSError, ValueError, KeyError):
                pass
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        self.reused += holder[0] is not None
        return holder[0]

    def put(self, name: str, levels: Sequence[int], value):
        if dist.get_global_rank() == 0:
            os.makedirs(self.dir, exist_ok=True)
            atomic_write_text(json.dumps({'key': self._key(levels), 'value': value}), os.path.join(self.dir, f'{name}.json'))
        return value

    def path(self, name: str, levels: Sequence[int], compute):
        hit = self.get(name, levels)
        return hit if hit is not None else self.put(name, levels, compute())


def analyze_run(save_folder: str, model: torch.nn.Module, eval_dataloader: Any, train_data: Any = None,
                settings: Optional[LandscapeSettings] = None, overwrite: bool = False) -> dict:
    """Analyse the trained levels of the IMP run in ``save_folder``; returns (and writes) the analysis dict.

    Resumable: every finished evaluation is kept in ``analysis/cache/`` and reused when the same command runs
    again (after an interruption, or when more levels have been trained since). An existing ``analysis.json``
    made with other settings is never replaced silently: that is an error unless ``overwrite``.

    ``model``: the run's network as its Trainers held it (after Composer's surgery: the parameter names of the
    saved weights), on the device to evaluate on (under Composer's launcher: this rank's GPU, unwrapped);
    ``trainer.state.model`` of a Trainer your ``make_trainer`` built works. ``eval_dataloader``: the test data.
    ``train_data``: un-augmented training examples for ``recalibrate_bn`` (a map-style dataset).

    ``settings``: :class:`LandscapeSettings` (default: its defaults). ``planes > 0`` adds, for each successive pair
    (L, L+1), the ``planes × planes`` error slice of the plane through ``w_L``, its projection ``m_{L+1} ⊙ w_L``
    and ``w_{L+1}`` (Figure 3).

    Every file read is checked against the checksums the run recorded (``level.json`` included): a level whose
    files changed since it finished is refused by name, never analysed. The analysis holds its own lock on the
    folder, so two analyses of one run never interleave their writes.
    """
    folder = RunFolder(save_folder)
    if not os.path.isdir(folder.root):
        raise FileNotFoundError(f'{folder.root} does not exist (point at the save_folder of a run made by run.py or '
                                'find_ticket).')
    with held_on_rank0(folder.lock('analysis')):
        return _analyze_run(folder, model, eval_dataloader, train_data, settings or LandscapeSettings(), overwrite)


def _analyze_run(folder: RunFolder, model: torch.nn.Module, eval_dataloader: Any, train_data: Any,
                 settings: LandscapeSettings, overwrite: bool) -> dict:
    betas = sorted(set(float(b) for b in settings.betas))  # paths run from their first network (β = 0) on
    recalibrate_bn, pairwise, planes = settings.recalibrate_bn, settings.pairwise, settings.planes
    config = on_rank0(folder.read_config)
    levels = on_rank0(folder.check_complete)
    if len(levels) < 2:
        raise ValueError(f'{folder.root} has {len(levels)} finished level(s) ({levels}); the analysis needs at least '
                         'levels 0 and 1 (level_XX/level.json, mask.pt and weights.pt).')
    tolerance = DEFAULT_TOLERANCE if settings.tolerance is None else float(settings.tolerance)
    out = folder.analysis_dir
    recorded = settings.record(tolerance)
    if not overwrite:
        refuse_changed_settings(folder.analysis_json, recorded, folder.root)
    # Nothing is computed from a file that fails its checksum: every level's row here, its weights and mask as they
    # are read (verified_load), each file hashed once.
    rows = on_rank0(lambda: {level: folder.verified_row(level, files=False) for level in levels})
    model = unwrap_model(model)
    batches = _eval_share(eval_dataloader)  # streamed once per evaluated chunk of networks, never materialized
    spread = dist.get_world_size() > 1
    # BatchNorm statistics are recomputed on a fixed, un-augmented subsample of the training set.
    recal = None
    if recalibrate_bn:
        if train_data is None:
            raise ValueError('recalibrate_bn needs train_data: un-augmented training examples to recompute '
                             'BatchNorm statistics on.')
        recal = fixed_subsample(train_data, min(1024, len(train_data)), 256, rank_share=spread)  # combined over ranks
    weights = {}
    for level in levels:
        w = folder.verified_load(level, 'weights.pt', rows[level]['manifest']['weights.pt'])  # every rank reads
        missing, unexpected = set(model.state_dict()) - set(w), set(w) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(f'{folder.weights(level)} does not match the model of {folder.config}: '
                             f'missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.')
        weights[level] = w
    # Cached numbers are reused only for the same weights, β grid, BatchNorm policy and eval data.
    eval_data = getattr(eval_dataloader, 'dataset', None)
    described = {'loader': type(eval_data or eval_dataloader).__name__,
                 'examples': len(eval_data) if eval_data is not None else None,
                 'data': config.get('data')}
    cache = _Cache(folder.analysis_cache, {l: rows[l]['manifest']['weights.pt'] for l in levels},
                   {'betas': recorded['betas'], 'recalibrate_bn': recalibrate_bn, 'eval': described})

    point = {l: cache.get(f'level_{l:02d}', [l]) for l in levels}
    todo = [l for l in levels if point[l] is None]
    for l, p in zip(todo, evaluate(model, [weights[l] for l in todo], batches, recalibrate_bn, recal, spread) if todo else []):
        point[l] = cache.put(f'level_{l:02d}', [l], p)  # all missing levels in one pass over the data
    point = [point[l] for l in levels]
    dense_error = point[0]['error']
    level_rows = [{'level': l, 'weights_remaining': rows[l]['weights_remaining'], 'error': p['error'], 'loss': p['loss'],
                   'matching': is_matching(p['error'], dense_error, tolerance)} for l, p in zip(levels, point)]
    matching = {r['level']: r['matching'] for r in level_rows}

    n = len(levels)
    pairs = [(i, i + 1) for i in range(n - 1)] + [(i, j) for i in range(n) for j in range(i + 2, n) if pairwise]
    paths = {}
    for i, j in pairs:
        a, b = levels[i], levels[j]
        paths[i, j] = cache.path(f'path_{a:02d}_{b:02d}', [a, b], lambda: linear_path(
            model, weights[a], weights[b], batches, betas, recalibrate_bn, recal, spread))
    successive = [{'from': levels[i], 'to': levels[i + 1], **paths[i, i + 1],
                   'connected': is_connected(paths[i, i + 1]['barrier'], tolerance),
                   'both_matching': matching[levels[i]] and matching[levels[i + 1]]} for i in range(n - 1)]
    max_err = [[point[i]['error'] if i == j else None for j in range(n)] for i in range(n)]
    barrier = [[0.0 if i == j else None for j in range(n)] for i in range(n)]
    for (i, j), path in paths.items():
        max_err[i][j] = max_err[j][i] = path['max_error']
        barrier[i][j] = barrier[j][i] = path['barrier']

    masks = {l: folder.verified_load(l, 'mask.pt', rows[l]['manifest']['mask.pt']) for l in levels[1:]}

    def projection(a: int, b: int) -> dict:
        """``m_b ⊙ w_a``: the level-a solution projected onto the next level's axial subspace."""
        mask = masks[b]
        return {k: (v * mask[k].to(v.dtype) if k in mask else v) for k, v in weights[a].items()}

    plane_results = []
    if planes:
        for a, b in zip(levels, levels[1:]):
            def compute(a=a, b=b):
                prunable = set(masks[b])
                return plane_slice(model, weights[a], projection(a, b), weights[b], batches, prunable, planes,
                                   recalibrate_bn=recalibrate_bn, recalibration_batches=recal, all_reduce=spread)
            plane_results.append({'level': a, **cache.path(f'slice_{a:02d}_{planes}', [a, b], compute)})

    # LCS-set membership (Definition 2.1, §2.1 and §2.2): is the projection m_{L+1} ⊙ w_L, and is w_{L+1}, within
    # E(w_L) + ε at the point and along the whole line from w_L? In test error with the matching tolerance (ε from
    # replicates), and, given training data, in training loss with the dense run's ε (the train LCS-set).
    train_batches = recal
    if train_batches is None and train_data is not None:
        train_batches = fixed_subsample(train_data, min(1024, len(train_data)), 256, rank_share=spread)
    train_epsilon = rows[levels[0]].get('epsilon')
    lcs = []
    for i in range(n - 1):
        a, b = levels[i], levels[i + 1]
        to_projection = cache.path(f'projection_{a:02d}', [a, b], lambda: linear_path(
            model, weights[a], projection(a, b), batches, betas, recalibrate_bn, recal, spread))
        entry = {'level': a, 'train_epsilon': train_epsilon,
                 'projection': {'max_error': to_projection['max_error'],
                                'test': in_lcs_set(to_projection['errors'], tolerance)},
                 'next': {'max_error': paths[i, i + 1]['max_error'],
                          'test': in_lcs_set(paths[i, i + 1]['errors'], tolerance)}}
        if train_batches is not None and train_epsilon is not None:
            train = cache.path(f'train_{a:02d}_{len(train_data)}', [a, b], lambda: {
                'projection': linear_path(model, weights[a], projection(a, b), train_batches, betas, recalibrate_bn,
                                          recal, spread)['losses'],
                'next': linear_path(model, weights[a], weights[b], train_batches, betas, recalibrate_bn, recal,
                                    spread)['losses']})
            for end in ('projection', 'next'):
                entry[end].update(max_train_loss=max(train[end]), train=in_lcs_set(train[end], train_epsilon))
        lcs.append(entry)

    verdict = iff_verdict(successive)
    result = {
        'settings': recorded, 'planes': plane_results, 'lcs': lcs,
        'tolerance': tolerance, 'betas': recorded['betas'], 'recalibrate_bn': recalibrate_bn,
        'levels': level_rows, 'successive': successive,
        'pairwise': {'levels': levels, 'max_error': max_err, 'barrier': barrier},
        'verdict': verdict, 'connected_iff_matching': verdict['holds'],
    }
    if dist.get_global_rank() == 0:
        os.makedirs(out, exist_ok=True)
        atomic_write_text(json.dumps(result, indent=2), folder.analysis_json)
        if cache.reused:
            log.info('analysis reused %d finished evaluation(s) from %s', cache.reused, cache.dir)
        plot_landscape_report(result, out)
    return result


def refuse_changed_settings(previous: str, settings: dict, folder: str) -> None:
    """Raise ``ValueError`` naming the changes if the result file ``previous`` was made with other ``settings``."""
    if not os.path.isfile(previous):
        return
    with open(previous) as f:
        old = json.load(f)
    # (an analysis.json from before settings were recorded has tolerance, betas and recalibrate_bn on top)
    old, keys = (old['settings'], list(settings)) if 'settings' in old else (old, list(SETTINGS[:3]))
    changed = [f'{k}: {old.get(k)!r} -> {settings[k]!r}' for k in keys if old.get(k) != settings[k]]
    if changed:
        raise ValueError(f'{previous} was made with other settings ({"; ".join(changed)}). Run with the same '
                         f'settings to resume or extend it, or replace it with `python -m composer_imp.analyze {folder} '
                         '--overwrite ...` (overwrite=True in Python).')


def _eval_share(loader: Any) -> Any:
    """This rank's disjoint, unpadded share of the eval set (the whole set in a single process).

    Under Composer's launcher every rank evaluates every network on its share and the sums are all-reduced,
    so the grid of a 2-D slice (and every path) is split evenly over ranks with each example counted once.
    """
    world = dist.get_world_size()
    dataset = getattr(loader, 'dataset', None)
    if world == 1 or dataset is None:  # FFCV: each rank already reads an unpadded strided share
        return loader
    share = Subset(dataset, range(dist.get_global_rank(), len(dataset), world))
    return DataLoader(share, batch_size=loader.batch_size, num_workers=loader.num_workers, collate_fn=loader.collate_fn)
