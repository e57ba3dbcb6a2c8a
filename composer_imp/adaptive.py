"""AdaptiveIMP (§2.2 of the paper): choose each level's pruning ratio so the pruned solution stays
inside the train LCS-set of the dense solution.

1. ε: :class:`LossStatistics` records the per-batch training loss over the last epoch of the dense run
   (under DDP the all-reduced global loss, identical on every rank); ε is its standard deviation.
   Threshold = dense loss + ε, where the dense loss is, by ``baseline``:
   ``'train'`` (default; the paper's wording) the mean train-mode batch loss of the last epoch, the same
   batches ε comes from; or ``'eval'`` the eval-mode loss of the dense solution on the sweep subsample —
   the measurement the sweep makes, lower than the train-mode mean (no batch statistics, dropout or
   augmentation, weights at the end of the epoch), so a stricter threshold. Measured with
   ``benchmarks/adaptive_vs_fixed.py`` (both side by side; numbers in the README): ``'train'`` admits larger
   ratios (fewer levels) and its final tickets matched on Fashion-MNIST and the quickstart.
2. Sweep at the level-L solution ``w_L``: for a candidate ratio p, prune p of the remaining weights to
   get the projection ``m_p ⊙ w_L`` and evaluate the training loss along the linear path from ``w_L`` to
   it on a fixed training subsample (eval mode, no augmentation). Larger p prunes a superset of weights,
   so the loss at the projection rises with p: the sweep bisects the candidates on the path's endpoint
   (about log2(#ratios) evaluations) and checks the interior points of the winner only (falling back to
   smaller ratios if one fails) — the largest ratio whose whole path passes, in a few passes. Candidates at or
   below the floor are not evaluated (they cannot change the level's ratio). Under Composer's
   launcher each rank evaluates its share of the subsample and the sums are all-reduced.
   With ``imp.target_sparsity`` set, the ratio that lands exactly on the target is one more candidate.
3. The level prunes ``max(p*, floor)`` where p* is the largest passing ratio and ``floor = imp.ratio``.

Compute accounting: one forward pass of one sample counts as 1/3 of that sample's training step
(forward + backward ≈ 3 forwards), so ``step_equivalents = forward_samples / (3 × global batch size)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.models import ComposerModel
from composer.utils import dist

from composer_imp.evaluate import evaluate_losses, interpolate
from composer_imp.masks import magnitude_prune

__all__ = ['AdaptiveConfig', 'LossStatistics', 'SweepResult', 'sweep_ratio', 'FORWARD_FRACTION_OF_STEP']

FORWARD_FRACTION_OF_STEP = 1.0 / 3.0


@dataclass
class AdaptiveConfig:
    """The ``imp.adaptive`` section.

    Attributes:
        enabled: choose ratios by the sweep (otherwise every level prunes ``imp.ratio``).
        ratios: candidate ratios of the remaining weights, each in (0, 1).
        path_points: points β in (0, 1] on the path from ``w_L`` (β=0) to its projection (β=1).
        subsample: training examples the sweep evaluates on (fixed for the whole run).
        batch_size: evaluation batch size of the sweep.
        baseline: ``'eval'`` or ``'train'``: which dense loss the threshold adds ε to (see module doc).
        recalibrate_bn: recompute BatchNorm statistics of every evaluated network on the subsample
            before evaluating it (one more forward pass per point, counted in the compute).
        reference: ``'dense'`` (the paper): the threshold is the dense solution's loss + ε at every level;
            ``'level'``: the loss of the level solution being pruned + ε (the LCS-set of ``w_L`` itself, as in
            Definition 2.1), which lets later levels prune more when they end slightly above the dense loss.
        land_on_target: with ``imp.target_sparsity`` set, also try the ratio that lands exactly on the
            target (when it exceeds the floor ``imp.ratio``): a candidate like the others, chosen only if its
            whole path stays below the threshold. Without it a grid ratio can stop a hair short of the target
            (10.1% left for a 10% goal) and cost a whole extra level.
    """

    enabled: bool = False
    ratios: list = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    path_points: list = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    subsample: int = 1024
    batch_size: int = 512
    baseline: str = 'train'
    recalibrate_bn: bool = True
    reference: str = 'dense'
    land_on_target: bool = True

    def validate(self) -> None:
        if not self.ratios:
            raise ValueError('imp.adaptive.ratios is empty; give candidate ratios such as [0.1, 0.2, ..., 0.9].')
        bad = [r for r in self.ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1]
        if bad:
            raise ValueError(f'imp.adaptive.ratios must all lie strictly between 0 and 1; got {bad}.')
        if not self.path_points or any(not 0 < b <= 1 for b in self.path_points):
            raise ValueError(f'imp.adaptive.path_points must be points β in (0, 1] on the path; got {list(self.path_points)}.')
        if not isinstance(self.subsample, int) or self.subsample < 1:
            raise ValueError(f'imp.adaptive.subsample must be a positive number of training examples; got {self.subsample!r}.')
        if self.batch_size < 1:
            raise ValueError(f'imp.adaptive.batch_size must be positive; got {self.batch_size}.')
        if self.baseline not in ('eval', 'train'):
            raise ValueError(f"imp.adaptive.baseline must be 'eval' or 'train'; got {self.baseline!r}.")
        if self.reference not in ('dense', 'level'):
            raise ValueError(f"imp.adaptive.reference must be 'dense' or 'level'; got {self.reference!r}.")


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


@dataclass
class SweepResult:
    ratio: Optional[float]          # largest passing candidate, None if none passed
    table: list                     # [{'ratio', 'max_loss', 'path_losses', 'within'}], evaluated ratios only;
                                    # 'within' is True only for ratios whose whole path was checked
    forward_samples: int            # samples forwarded by the sweep


def sweep_ratio(
    model: ComposerModel,
    weights: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    batches: Sequence,
    threshold: float,
    config: AdaptiveConfig,
    scope: str = 'global',
    all_reduce: bool = False,
    floor: float = 0.0,
) -> SweepResult:
    """The largest candidate ratio whose whole path from ``weights`` to its projection stays below ``threshold``.

    Only candidates above ``floor`` are evaluated: the level prunes ``max(p, floor)``, so a passing ratio at or
    below the floor cannot change it (``None`` then means "none above the floor passes").

    ``all_reduce=True`` (under Composer's launcher, called on every rank): ``batches`` is this rank's share of the
    subsample (see :func:`composer_imp.evaluate.fixed_subsample`); every loss is over the whole subsample, so all
    ranks take the same decisions and ``forward_samples`` counts the samples of all ranks.
    """
    n_samples = sum(len(b[0]) for b in batches)
    if all_reduce and dist.get_world_size() > 1:
        total = torch.tensor([n_samples], dtype=torch.int64, device=next(model.parameters()).device)
        dist.all_reduce(total)
        n_samples = int(total.item())
    betas = sorted(set(float(b) for b in config.path_points))
    ratios = sorted(set(float(r) for r in config.ratios if r > floor))
    rows: dict[float, dict] = {}
    forwards = 0

    projections: dict[float, dict] = {}  # one magnitude sort per ratio, not per point on its path

    def loss_at(ratio: float, beta: float) -> float:
        nonlocal forwards
        row = rows.setdefault(ratio, {'ratio': ratio, 'path_losses': {}, 'within': None})
        if beta not in row['path_losses']:
            if ratio not in projections:
                new_mask = magnitude_prune(weights, mask, ratio, scope)
                projections[ratio] = {k: (v * new_mask[k].to(v.dtype) if k in new_mask else v) for k, v in weights.items()}
            point = interpolate(weights, projections[ratio], [beta])
            row['path_losses'][beta] = evaluate_losses(model, point, batches, config.recalibrate_bn, all_reduce)[0]
            forwards += n_samples * (2 if config.recalibrate_bn else 1)
        return row['path_losses'][beta]

    def ok(value: float) -> bool:
        return math.isfinite(value) and value <= threshold

    # Larger ratios prune supersets of weights, so the loss at the projection rises with p: bisect on the
    # endpoints (β = 1, where the path loss usually peaks), then check the winner's interior points.
    lo, hi = -1, len(ratios)  # ratios[lo] passes (or none), ratios[hi] fails (or none)
    # The smallest candidate first: at high sparsity it already leaves the set, and one evaluation settles the sweep.
    if ratios:
        lo, hi = (0, hi) if ok(loss_at(ratios[0], betas[-1])) else (-1, 0)
    while True:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(loss_at(ratios[mid], betas[-1])):
                lo = mid
            else:
                hi = mid
        if lo < 0 or all(ok(loss_at(ratios[lo], b)) for b in betas[:-1]):
            break
        hi, lo = lo, -1  # an interior point failed: the answer is a smaller ratio
    for ratio, row in rows.items():
        row['within'] = ok(max(row['path_losses'].values())) and (lo >= 0 and ratio <= ratios[lo])
        row['max_loss'] = max(row['path_losses'].values())
        row['path_losses'] = {str(b): v for b, v in sorted(row['path_losses'].items())}
    table = [rows[r] for r in sorted(rows)]
    return SweepResult(ratios[lo] if lo >= 0 else None, table, forwards)
