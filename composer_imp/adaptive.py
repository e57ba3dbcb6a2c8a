"""``AdaptiveIMP`` (§2.2 of the paper): choose each level's pruning ratio so the pruned solution stays
inside the train LCS-set of the dense solution. A drop-in replacement for :class:`~composer_imp.imp.IMP`.

1. Threshold = dense loss + ε. The paper: "the training loss of the dense network + the estimated ε". The
   dense loss (``baseline='eval'``, default) is the dense solution's loss on the training subsample measured by
   the same evaluator as the path losses it is compared with (same subsample, eval mode, hard labels, BatchNorm
   policy); ``baseline='train'`` takes the mean train-mode batch loss of the dense run's last epoch instead
   (augmented batches, batch statistics, moving weights, smoothed targets under LabelSmoothing), which is not the
   quantity the sweep measures. ε (``epsilon='train'``, default, the paper's): the standard deviation of the
   per-batch training loss over the last epoch of the dense run (all-reduced under DDP), recorded by
   :class:`~composer_imp.loss_statistics.LossStatistics`; ``epsilon='eval'``: the standard deviation of the
   evaluator's per-batch losses of the dense solution on the subsample at the training batch size. While an
   algorithm changes the training loss or its batches (:data:`LOSS_CHANGING_ALGORITHMS`), the train-mode
   baseline and ε are refused: use ``epsilon='eval'``.
2. Sweep at the level-L solution ``w_L`` (:func:`sweep_ratio`, the functional form): for a candidate ratio p,
   prune p of the remaining weights to get the projection ``m_p ⊙ w_L`` and evaluate the training loss along
   the linear path from ``w_L`` to it on a fixed training subsample (eval mode, no augmentation). The answer is
   the paper's: the largest candidate whose whole path stays below the threshold, for any loss table (the
   endpoints of all candidates in one pass, then interiors of passing candidates, largest first; ``search=
   'bisect'`` is a cheaper opt-in that assumes the endpoint loss rises with p). Candidates at or below the
   floor are not evaluated. Under Composer's launcher each rank
   evaluates its share of the subsample and the sums are all-reduced. With ``target_sparsity`` set in
   :func:`~composer_imp.find_ticket`, the ratio that lands exactly on the target is one more candidate.
3. The level prunes ``max(p*, floor)`` where p* is the largest passing ratio and ``floor = ratio``.

Compute accounting: one forward pass of one sample counts as 1/3 of that sample's training step
(forward + backward ≈ 3 forwards), so ``step_equivalents = forward_samples / (3 × global batch size)``.

Example:
    >>> adaptive = AdaptiveIMP(ratio=0.2, rewind='1ep', subsample=512)
    >>> {k: adaptive.settings()[k] for k in ('name', 'baseline', 'epsilon', 'search')}
    {'name': 'AdaptiveIMP', 'baseline': 'eval', 'epsilon': 'train', 'search': 'exhaustive'}
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from composer.core import State, Time
from composer.models import ComposerModel
from composer.utils import dist
from torch import nn

from composer_imp.evaluate import evaluate_losses, fixed_subsample, interpolate, per_batch_losses, without_augmentation
from composer_imp.imp import IMP
from composer_imp.masks import Mask, magnitude_prune, sparsity_report, unwrap_model

__all__ = ['AdaptiveIMP', 'SweepResult', 'sweep_ratio', 'largest_passing_ratio', 'FORWARD_FRACTION_OF_STEP',
           'LOSS_CHANGING_ALGORITHMS']

FORWARD_FRACTION_OF_STEP = 1.0 / 3.0
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Composer algorithms that change the training loss or the training batches: a train-mode loss statistic is then not
# comparable with the evaluator's path losses.
LOSS_CHANGING_ALGORITHMS = ('LabelSmoothing', 'MixUp', 'CutMix', 'CutOut', 'ColOut', 'ProgressiveResizing',
                            'SelectiveBackprop', 'SeqLengthWarmup')


class AdaptiveIMP(IMP):
    """IMP whose per-level ratio is the largest that keeps the pruned solution in the dense train LCS-set.

    Args:
        ratio: the floor: every level prunes at least this fraction of the remaining weights.
        rewind, ignore, scope, rewind_optimizer, data_order: as :class:`~composer_imp.imp.IMP`.
        ratios: candidate ratios of the remaining weights, each in (0, 1).
        path_points: points β in (0, 1] on the path from ``w_L`` (β=0) to its projection (β=1).
        subsample: training examples the sweep evaluates on (fixed for the whole run).
        batch_size: evaluation batch size of the sweep.
        baseline: ``'eval'`` (default) or ``'train'``: which dense loss the threshold adds ε to (module doc).
        epsilon: ``'train'`` (default, the paper's) or ``'eval'``: how ε is measured (module doc).
        recalibrate_bn: ``False`` (default, as the paper's authors evaluated): BatchNorm statistics as the networks hold
            them (interpolated along a path; the projection keeps ``w_L``'s). ``True``: recompute the statistics of
            every evaluated network on the subsample first (one more forward pass per point, counted in the compute),
            a different method that can choose another ratio.
        reference: ``'dense'`` (the paper): the threshold is the dense solution's loss + ε at every level;
            ``'level'``: the loss of the level solution being pruned + ε (the LCS-set of ``w_L`` itself).
        land_on_target: with a ``target_sparsity``, also try the ratio that lands exactly on it (global scope).
        search: ``'exhaustive'`` (the paper's rule: the largest candidate whose whole path passes, whatever the
            loss table) or ``'bisect'`` (fewer passes; assumes the endpoint loss rises with the ratio).
        sweep_data: un-augmented training examples for the fixed subsample: a map-style dataset, or an object
            with ``__len__`` and ``batches(indices, batch_size)`` (FFCV's
            :class:`~composer_imp.data.ffcv.BetonExamples`). Default: the training loader's dataset seen through
            :func:`~composer_imp.evaluate.without_augmentation`. Not part of the run's settings.
    """

    def __init__(self, ratio: float = 0.2, rewind: Union[str, int, Time] = '0ba', ignore: Iterable[str] = (),
                 scope: str = 'global', rewind_optimizer: bool = False, data_order: str = 'new',
                 ratios: Sequence[float] = DEFAULT_RATIOS,
                 path_points: Sequence[float] = (0.25, 0.5, 0.75, 1.0), subsample: int = 1024, batch_size: int = 512,
                 baseline: str = 'eval', epsilon: str = 'train', recalibrate_bn: bool = False, reference: str = 'dense',
                 land_on_target: bool = False, search: str = 'exhaustive', sweep_data: Any = None):
        super().__init__(ratio, rewind, ignore, scope, rewind_optimizer, data_order)
        ratios, path_points = list(ratios), list(path_points)
        if not ratios:
            raise ValueError('AdaptiveIMP ratios is empty; give candidate ratios such as [0.1, 0.2, ..., 0.9].')
        bad = [r for r in ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1]
        if bad:
            raise ValueError(f'AdaptiveIMP ratios must all lie strictly between 0 and 1; got {bad}.')
        if not path_points or any(not 0 < b <= 1 for b in path_points):
            raise ValueError(f'AdaptiveIMP path_points must be points β in (0, 1] on the path; got {path_points}.')
        if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
            raise ValueError(f'AdaptiveIMP subsample must be a positive number of training examples; got {subsample!r}.')
        if batch_size < 1:
            raise ValueError(f'AdaptiveIMP batch_size must be positive; got {batch_size}.')
        if baseline not in ('eval', 'train'):
            raise ValueError(f"AdaptiveIMP baseline must be 'eval' or 'train'; got {baseline!r}.")
        if epsilon not in ('eval', 'train'):
            raise ValueError(f"AdaptiveIMP epsilon must be 'train' (the dense run's per-batch training losses) or "
                             f"'eval' (the evaluator's per-batch losses); got {epsilon!r}.")
        if reference not in ('dense', 'level'):
            raise ValueError(f"AdaptiveIMP reference must be 'dense' or 'level'; got {reference!r}.")
        if search not in ('exhaustive', 'bisect'):
            raise ValueError(f"AdaptiveIMP search must be 'exhaustive' (the paper's rule) or 'bisect'; got {search!r}.")
        self.ratios, self.path_points = [float(r) for r in ratios], [float(b) for b in path_points]
        self.subsample, self.batch_size = subsample, batch_size
        self.baseline, self.epsilon, self.recalibrate_bn, self.reference = baseline, epsilon, recalibrate_bn, reference
        self.land_on_target, self.search = land_on_target, search
        self.sweep_data = sweep_data

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), 'ratios': self.ratios, 'path_points': self.path_points,
                'subsample': self.subsample, 'batch_size': self.batch_size, 'baseline': self.baseline, 'epsilon': self.epsilon,
                'recalibrate_bn': self.recalibrate_bn, 'reference': self.reference,
                'land_on_target': self.land_on_target, 'search': self.search}

    def check(self, state: State) -> None:
        """Refuse, before any training, a setup the sweep cannot run on (called by the level loop at level 0)."""
        super().check(state)
        changing = [type(a).__name__ for a in state.algorithms if type(a).__name__ in LOSS_CHANGING_ALGORITHMS]
        train_mode = [k for k, v in (('baseline', self.baseline), ('epsilon', self.epsilon)) if v == 'train']
        if changing and train_mode:
            raise ValueError(f'AdaptiveIMP {" and ".join(f"{k}={v!r}" for k, v in (("baseline", self.baseline), ("epsilon", self.epsilon)) if k in train_mode)} '
                             f'measures the training loss in train mode, which {", ".join(changing)} changes (smoothed or '
                             'mixed targets, altered batches), while the sweep compares eval-mode, hard-label losses. Set '
                             "baseline='eval' and epsilon='eval' (ε from the evaluator's per-batch losses).")
        batch = (getattr(state.train_dataloader, 'batch_size', None) or 1) * dist.get_world_size()
        if self.epsilon == 'eval' and self.subsample < 2 * batch:
            raise ValueError(f"AdaptiveIMP epsilon='eval' needs at least two training batches of {batch} in the subsample; "
                             f'subsample={self.subsample}: raise it to at least {2 * batch}.')
        if self.recalibrate_bn and dist.get_world_size() > 1 and \
                any(isinstance(m, nn.SyncBatchNorm) for m in state.model.modules()):
            # Its train-mode forward synchronizes across ranks, which hold different numbers of sweep batches.
            raise ValueError('AdaptiveIMP recalibrate_bn cannot recompute SyncBatchNorm statistics under several '
                             'ranks; set recalibrate_bn=False or use plain BatchNorm (the sweep combines BatchNorm '
                             'statistics across ranks itself).')
        dataset = self._sweep_data(state)
        try:
            size = len(dataset)
        except TypeError:
            raise ValueError('AdaptiveIMP needs training examples with a length to draw its fixed subsample from; '
                             f'{type(dataset).__name__} has none: pass sweep_data=.') from None
        if self.subsample > size:
            raise ValueError(f'AdaptiveIMP subsample={self.subsample} is larger than the training set ({size} '
                             f'examples); choose at most {size}.')

    def _sweep_data(self, state: State) -> Any:
        if self.sweep_data is not None:
            return self.sweep_data
        loader = state.train_dataloader
        if not hasattr(loader, 'dataset'):
            raise ValueError(f'AdaptiveIMP needs training examples for its sweep, and the train_dataloader '
                             f'({type(loader).__name__}) has no map-style .dataset; pass sweep_data= '
                             '(for FFCV: composer_imp.data.ffcv.BetonExamples(root, kind)).')
        return without_augmentation(loader.dataset)

    def choose_ratio(self, state: State, solution: Mapping[str, torch.Tensor], mask: Mask, dense_row: dict,
                     dense_weights: Callable[[], dict], target_sparsity: Optional[float] = None,
                     level_row: Optional[dict] = None) -> tuple[float, Optional[dict]]:
        """The sweep at ``solution`` (``w_L``, on every rank): ``(ratio to prune, sweep report)``.

        Every rank evaluates its share of the fixed subsample on the Trainer's device and the sums are all-reduced,
        so every rank takes the same decision. The model's own weights are restored afterwards.
        """
        if self.epsilon == 'train' and dense_row.get('epsilon') is None:
            raise ValueError('AdaptiveIMP needs ε, the standard deviation of the dense run\'s per-batch training loss '
                             'over its last epoch, which level 0 did not record (fewer than 2 batches, or a run made '
                             'before adaptive existed); start a new run (another save_folder or overwrite).')
        tic = time.perf_counter()
        model = unwrap_model(state.model)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        spread = dist.get_world_size() > 1
        batches = fixed_subsample(self._sweep_data(state), self.subsample, self.batch_size, seed=0, rank_share=True)
        forwards = 0
        reference = level_row if self.reference == 'level' and level_row is not None else dense_row
        loader = state.train_dataloader
        global_batch = (getattr(loader, 'batch_size', None) or 1) * dist.get_world_size()
        previous = (level_row or {}).get('sweep') or {}  # a sweep of this run: its dense measurements are reused
        try:
            if self.baseline == 'eval' and reference is dense_row and previous.get('baseline') == 'eval' and \
                    previous.get('reference') == 'dense':
                dense = previous['dense_loss']  # the dense solution on the same fixed subsample: measured once per run
            elif self.baseline == 'eval':
                ref_weights = dense_weights() if reference is dense_row else solution
                dense = evaluate_losses(model, [ref_weights], batches, self.recalibrate_bn, all_reduce=spread)[0]
                forwards += self.subsample * (2 if self.recalibrate_bn else 1)
            else:
                dense = reference['train_loss_mean']
            if self.epsilon == 'train':
                epsilon = dense_row['epsilon']  # the paper's: the dense run's last epoch
            elif previous.get('epsilon_source') == 'eval':
                epsilon = previous['epsilon']
            else:  # the evaluator's per-batch losses of the dense solution at the training batch size
                data = fixed_subsample(self._sweep_data(state), self.subsample, global_batch, seed=0, rank_share=True)
                epsilon = statistics.stdev(per_batch_losses(model, dense_weights(), data, self.recalibrate_bn, spread))
                forwards += self.subsample * (2 if self.recalibrate_bn else 1)
            threshold = dense + epsilon
            landing = self._landing_ratio(mask, target_sparsity)
            ratios = [*self.ratios, landing] if landing is not None else self.ratios
            result = sweep_ratio(model, solution, mask, batches, threshold, ratios, self.path_points,
                                 self.recalibrate_bn, self.scope, all_reduce=spread, floor=self.ratio,
                                 search=self.search)
        finally:
            model.load_state_dict(saved)
        forwards += result.forward_samples
        ratio = max(result.ratio or 0.0, self.ratio)
        return ratio, {'epsilon': epsilon, 'epsilon_source': self.epsilon, 'baseline': self.baseline,
                       'reference': self.reference,
                       'dense_loss': dense, 'threshold': threshold, 'landing_ratio': landing, 'table': result.table,
                       'chosen': result.ratio, 'pruned': ratio, 'forward_samples': forwards,
                       'step_equivalents': forwards * FORWARD_FRACTION_OF_STEP / global_batch,
                       'seconds': time.perf_counter() - tic}

    def _landing_ratio(self, mask: Mask, target: Optional[float]) -> Optional[float]:
        """The ratio of the remaining weights that leaves exactly ``target`` sparsity, if worth trying."""
        if target is None or not self.land_on_target or self.scope != 'global':
            return None  # layerwise: per-layer rounding could stop a few weights short of the target
        report = sparsity_report(mask)
        allowed = math.floor((1.0 - target) * report['total'] + 1e-9)  # weights the target lets us keep
        ratio = (report['remaining'] - allowed) / max(report['remaining'], 1)
        # At or below the floor, the floor itself reaches the target; the grid's own ratios need no second try.
        if not self.ratio < ratio < 1 or ratio in self.ratios:
            return None
        return ratio


@dataclass
class SweepResult:
    ratio: Optional[float]          # largest passing candidate, None if none passed
    table: list                     # [{'ratio', 'max_loss', 'path_losses', 'within'}], evaluated ratios only;
                                    # 'within' is True only for ratios whose whole path was checked
    forward_samples: int            # samples forwarded by the sweep


def largest_passing_ratio(
    ratios: Sequence[float],
    betas: Sequence[float],
    losses: Callable[[Sequence[tuple[float, float]]], list[float]],
    threshold: float,
    search: str = 'exhaustive',
) -> Optional[float]:
    """The largest ratio in ``ratios`` (ascending) whose path losses at every β in ``betas`` (ascending, ending at
    the projection) are finite and at most ``threshold``; ``None`` if none.

    ``losses(points)`` returns the path losses at ``[(ratio, β), ...]`` (evaluated together when it can).
    ``'exhaustive'`` follows the rule for any table: all endpoints, then interiors of passing candidates, largest
    first. ``'bisect'`` bisects on the endpoints, assuming they rise with the ratio, then checks the winner's
    interior (falling back below it if an interior point fails).
    """
    def ok(value: float) -> bool:
        return math.isfinite(value) and value <= threshold

    def whole_path(ratio: float) -> bool:
        return all(ok(v) for v in losses([(ratio, b) for b in betas]))

    if search == 'exhaustive':
        ends = losses([(r, betas[-1]) for r in ratios]) if ratios else []
        return next((r for r, end in sorted(zip(ratios, ends), reverse=True) if ok(end) and whole_path(r)), None)
    lo, hi = -1, len(ratios)  # ratios[lo] passes (or none), ratios[hi] fails (or none)
    if ratios:  # the smallest first: at high sparsity it already fails, and one evaluation settles the sweep
        lo, hi = (0, hi) if ok(losses([(ratios[0], betas[-1])])[0]) else (-1, 0)
    while True:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(losses([(ratios[mid], betas[-1])])[0]) else (lo, mid)
        if lo < 0 or whole_path(ratios[lo]):
            return ratios[lo] if lo >= 0 else None
        hi, lo = lo, -1  # an interior point failed: look below it


def sweep_ratio(
    model: ComposerModel,
    weights: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    batches: Sequence,
    threshold: float,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    path_points: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    recalibrate_bn: bool = False,
    scope: str = 'global',
    all_reduce: bool = False,
    floor: float = 0.0,
    search: str = 'exhaustive',
) -> SweepResult:
    """The largest candidate ratio whose whole path from ``weights`` to its projection stays below ``threshold``.

    ``search='exhaustive'`` (the paper's rule, for every loss table): the endpoints of every candidate in one
    evaluation pass, then the interior points of the candidates whose endpoint passed, largest first, until one
    passes whole. ``search='bisect'`` (opt-in, fewer passes): bisects the candidates on their endpoints, which
    assumes the endpoint loss rises with the ratio; when it does not, it can return a smaller ratio than the rule.

    Only candidates above ``floor`` are evaluated: the level prunes ``max(p, floor)``, so a passing ratio at or
    below the floor cannot change it (``None`` then means "none above the floor passes").

    ``all_reduce=True`` (under Composer's launcher, called on every rank): ``batches`` is this rank's share of the
    subsample (see :func:`composer_imp.evaluate.fixed_subsample`); every loss is over the whole subsample, so all
    ranks take the same decisions and ``forward_samples`` counts the samples of all ranks.
    """
    if search not in ('exhaustive', 'bisect'):
        raise ValueError(f"search must be 'exhaustive' (the paper's rule) or 'bisect'; got {search!r}.")
    n_samples = sum(len(b[0]) for b in batches)
    if all_reduce and dist.get_world_size() > 1:
        total = torch.tensor([n_samples], dtype=torch.int64, device=next(model.parameters()).device)
        dist.all_reduce(total)
        n_samples = int(total.item())
    betas = sorted(set(float(b) for b in path_points))
    ratios = sorted(set(float(r) for r in ratios if r > floor))
    rows = {r: {'ratio': r, 'path_losses': {}, 'within': None} for r in ratios}
    projections: dict[float, dict] = {}  # one magnitude sort per ratio, not per point on its path
    forwards = 0

    def losses(points: Sequence[tuple[float, float]]) -> list[float]:
        """Path losses at ``(ratio, β)`` points; the missing ones evaluated together, in one pass over the data."""
        nonlocal forwards
        todo = [(r, b) for r, b in points if b not in rows[r]['path_losses']]
        for r, _ in todo:
            if r not in projections:
                new_mask = magnitude_prune(weights, mask, r, scope)
                projections[r] = {k: (v * new_mask[k].to(v.dtype) if k in new_mask else v) for k, v in weights.items()}
        if todo:
            sets = [interpolate(weights, projections[r], [b])[0] for r, b in todo]
            for (r, b), value in zip(todo, evaluate_losses(model, sets, batches, recalibrate_bn, all_reduce)):
                rows[r]['path_losses'][b] = value
            forwards += n_samples * len(todo) * (2 if recalibrate_bn else 1)
        return [rows[r]['path_losses'][b] for r, b in points]

    chosen = largest_passing_ratio(ratios, betas, losses, threshold, search)
    table = []
    for ratio in ratios:
        row = rows[ratio]
        if not row['path_losses']:
            continue
        row['max_loss'] = max(row['path_losses'].values())
        row['within'] = chosen is not None and ratio <= chosen and len(row['path_losses']) == len(betas) and \
            math.isfinite(row['max_loss']) and row['max_loss'] <= threshold
        row['path_losses'] = {str(b): v for b, v in sorted(row['path_losses'].items())}
        table.append(row)
    return SweepResult(chosen, table, forwards)
