"""One evaluation primitive: networks on a line between known weight sets, evaluated on a fixed dataset.

Shared by the adaptive ratio sweep (and meant for the landscape analyses), so the BatchNorm policy,
the subsample and the batching cannot drift apart. Weights are swapped in with
``torch.func.functional_call`` — no ``load_state_dict`` copy per evaluated point.

BatchNorm: evaluation runs in eval mode with the *interpolated* running statistics (buffers are
interpolated like parameters), the paper's default.

Example:
    >>> points = interpolate(w_a, w_b, [0.0, 0.5, 1.0])                 # doctest: +SKIP
    >>> losses = evaluate_losses(model, points, batches)                 # doctest: +SKIP
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from composer.models import ComposerModel
from torch.func import functional_call
from torch.utils.data import Dataset, default_collate

__all__ = ['interpolate', 'evaluate_losses', 'fixed_subsample', 'EvalBatches']

EvalBatches = list


def interpolate(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], betas: Sequence[float]) -> list[dict[str, torch.Tensor]]:
    """``(1 - β) a + β b`` for each β; floating tensors are interpolated, integer buffers taken from ``a``."""
    if set(a) != set(b):
        raise ValueError(f'Cannot interpolate weight sets with different keys: {sorted(set(a) ^ set(b))[:5]}')
    out = []
    for beta in betas:
        point = {}
        for k, va in a.items():
            vb = b[k]
            point[k] = torch.lerp(va, vb.to(va.dtype), float(beta)) if va.is_floating_point() else va
        out.append(point)
    return out


def fixed_subsample(dataset: Dataset, size: int, batch_size: int, seed: int = 0) -> list:
    """A fixed random subset of ``dataset`` (same indices for a given seed), collated into batches."""
    n = len(dataset)  # type: ignore[arg-type]
    if not 0 < size <= n:
        raise ValueError(f'imp.adaptive.subsample={size} must be between 1 and the training set size {n}.')
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].tolist()
    return [default_collate([dataset[i] for i in idx[s:s + batch_size]]) for s in range(0, size, batch_size)]


@torch.no_grad()
def evaluate_losses(model: ComposerModel, weight_sets: Sequence[Mapping[str, torch.Tensor]], batches: Iterable) -> list[float]:
    """Mean loss (``model.loss``) of ``model`` under each weight set over ``batches``, in eval mode.

    Each weight set must name every parameter and buffer of ``model`` (a ``state_dict``); the model's
    own tensors are untouched.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    weight_sets = [{k: v.to(device) for k, v in w.items()} for w in weight_sets]  # once, not per batch
    totals = [0.0] * len(weight_sets)
    count = 0
    try:
        for batch in batches:
            batch = [t.to(device) if isinstance(t, torch.Tensor) else t for t in batch]
            n = len(batch[0])
            for i, weights in enumerate(weight_sets):
                outputs = functional_call(model, weights, (batch,))
                totals[i] += float(model.loss(outputs, batch)) * n
            count += n
    finally:
        model.train(was_training)
    return [t / max(count, 1) for t in totals]
