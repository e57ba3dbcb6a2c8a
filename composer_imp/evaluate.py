"""One evaluation primitive: networks on a line between known weight sets, evaluated on a fixed dataset.

Shared by the adaptive ratio sweep (and meant for the landscape analyses), so the BatchNorm policy,
the subsample and the batching cannot drift apart. Weights are swapped in with
``torch.func.functional_call`` — no ``load_state_dict`` copy per evaluated point.

BatchNorm: evaluation runs in eval mode. By default with the *interpolated* running statistics (buffers
are interpolated like parameters, what the paper's connectivity plots did); with ``recalibrate_bn=True``
each evaluated network first gets fresh running statistics from a train-mode pass over the same batches
(cumulative average, no gradient), so a pruned or interpolated network is judged with statistics of its
own activations rather than those of the network it came from. That pass costs one more forward per point.

Example:
    >>> points = interpolate(w_a, w_b, [0.0, 0.5, 1.0])                 # doctest: +SKIP
    >>> losses = evaluate_losses(model, points, batches)                 # doctest: +SKIP
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import torch
from composer.models import ComposerModel
from composer.utils import dist
from torch import nn
from torch.func import functional_call
from torch.utils.data import default_collate

__all__ = ['without_augmentation', 'interpolate', 'evaluate', 'evaluate_losses', 'per_batch_losses', 'recalibrate_batchnorm', 'fixed_subsample', 'local_device']


def without_augmentation(dataset: Any) -> Any:
    """The training examples of ``dataset`` as evaluation would see them: no random crop, flip or resize.

    AdaptiveIMP's sweep and BatchNorm recalibration read a *fixed* subsample; random augmentation would make
    it change from level to level. Datasets of this package know their un-augmented view (CIFAR, ImageFolder,
    Streaming); tensors are returned as they are; any other dataset is used as is (pass ``sweep_data`` to
    :class:`~composer_imp.AdaptiveIMP` if yours augments).
    """
    if hasattr(dataset, 'without_augmentation'):
        return dataset.without_augmentation()
    eval_transform = getattr(dataset, 'eval_transform', None)
    if eval_transform is not None:
        view = copy.copy(dataset)  # shares the list of files
        view.transform = eval_transform
        return view
    return dataset


def local_device(requested: Any = None) -> torch.device:
    """This rank's accelerator when there is one and the run did not ask for the CPU (one GPU per rank).

    ``requested``: the run's device as Composer takes it (``'cpu'``, ``'gpu'``, ``None`` or a ``Device``).
    """
    if getattr(requested, 'name', requested) != 'cpu' and torch.cuda.is_available():
        return torch.device('cuda', dist.get_local_rank())
    return torch.device('cpu')


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


def fixed_subsample(dataset: Any, size: int, batch_size: int, seed: int = 0, rank_share: bool = False) -> list:
    """A fixed random subset of ``dataset`` (same indices for a given seed), collated into batches.

    ``dataset`` is map-style, or has ``batches(indices, batch_size)`` (FFCV's ``BetonExamples``).
    ``rank_share=True`` (under Composer's launcher): only this rank's batches of that list, batch ``i`` going to
    rank ``i % world_size``, so the ranks' shares together are exactly the single-process batches and each rank
    reads only its own examples (for :func:`evaluate` with ``all_reduce=True``).
    """
    n = len(dataset)
    if not 0 < size <= n:
        raise ValueError(f'subsample={size} must be between 1 and the training set size {n}.')
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].tolist()
    chunks = [idx[s:s + batch_size] for s in range(0, size, batch_size)]
    if rank_share:
        chunks = chunks[dist.get_global_rank()::dist.get_world_size()]
    if hasattr(dataset, 'batches'):
        return dataset.batches([i for c in chunks for i in c], batch_size) if chunks else []
    return [default_collate([dataset[i] for i in c]) for c in chunks]


def _batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


@torch.no_grad()
def recalibrate_batchnorm(model: ComposerModel, weights: Mapping[str, torch.Tensor], batches: Iterable,
                          all_reduce: bool = False) -> dict[str, torch.Tensor]:
    """A copy of ``weights`` whose BatchNorm running statistics are recomputed on ``batches`` (train-mode pass).

    The statistics are the plain average over batches of each batch's mean and variance. ``all_reduce=True``:
    ``batches`` is this rank's share; the averages are combined over ranks, weighted by batch counts, so every
    rank gets the statistics of all the batches (a rank with no batch contributes nothing).
    """
    bns = _batchnorms(model)
    out = dict(weights)
    for name, bn in bns.items():
        prefix = f'{name}.' if name else ''
        out[prefix + 'running_mean'] = torch.zeros_like(weights[prefix + 'running_mean'])
        out[prefix + 'running_var'] = torch.ones_like(weights[prefix + 'running_var'])
        out[prefix + 'num_batches_tracked'] = torch.zeros_like(weights[prefix + 'num_batches_tracked'])
    momenta = {name: bn.momentum for name, bn in bns.items()}
    was_training = model.training
    try:
        for bn in bns.values():
            bn.momentum = None  # cumulative average over the batches, independent of their number
        model.train()
        for batch in batches:
            functional_call(model, out, (batch,))  # BatchNorm updates the running buffers in `out` in place
    finally:
        for name, bn in bns.items():
            bn.momentum = momenta[name]
        model.train(was_training)
    if all_reduce and dist.get_world_size() > 1 and bns:
        prefixes = [f'{name}.' if name else '' for name in bns]
        counts = torch.stack([out[p + 'num_batches_tracked'].to(torch.float64) for p in prefixes])
        sums = [torch.cat([out[p + 'running_mean'], out[p + 'running_var']]).to(torch.float64) * c
                for p, c in zip(prefixes, counts)]
        flat = torch.cat([counts, *sums])
        dist.all_reduce(flat)  # one collective for every layer; float64 keeps the batch counts exact
        counts, offset = flat[:len(prefixes)], len(prefixes)
        for p, c in zip(prefixes, counts):
            mean, var = out[p + 'running_mean'], out[p + 'running_var']
            both = flat[offset:offset + 2 * mean.numel()] / c.clamp(min=1)
            offset += 2 * mean.numel()
            out[p + 'running_mean'] = both[:mean.numel()].to(mean.dtype)
            out[p + 'running_var'] = both[mean.numel():].to(var.dtype)
            out[p + 'num_batches_tracked'] = c.to(out[p + 'num_batches_tracked'].dtype)
    return out


def _on(batches: Iterable, device: torch.device) -> Iterator:
    """The batches moved to ``device`` one at a time: a DataLoader is streamed, never held in memory whole."""
    for batch in batches:
        yield [t.to(device) if isinstance(t, torch.Tensor) else t for t in batch]


@torch.no_grad()
def evaluate(
    model: ComposerModel,
    weight_sets: Sequence[Mapping[str, torch.Tensor]],
    batches: Sequence,
    recalibrate_bn: bool = False,
    recalibration_batches: Optional[Sequence] = None,
    all_reduce: bool = False,
) -> list[dict[str, float]]:
    """Mean loss (``model.loss``) and classification error of ``model`` under each weight set, in eval mode.

    ``all_reduce=True`` (under Composer's launcher): ``batches`` (and ``recalibration_batches``) are this rank's
    share of the data (disjoint, unpadded); the sums, and the BatchNorm statistics, are combined over ranks, so
    every rank returns the result over all the data.

    Each weight set must name every parameter and buffer of ``model`` (a ``state_dict``); the model's
    own tensors are untouched. ``batches`` is a list or a loader (re-iterable; streamed batch by batch, so an
    ImageNet-sized eval set is never held in memory). ``recalibrate_bn`` recomputes BatchNorm statistics per
    weight set first, on ``recalibration_batches`` (default: ``batches``; pass training data when ``batches``
    is a test set).

    Returns:
        ``[{'loss': float, 'error': float}]``, one per weight set (error = 1 - top-1 accuracy).
    """
    was_training = model.training
    device = next(model.parameters()).device
    weight_sets = [{k: v.to(device) for k, v in w.items()} for w in weight_sets]  # once, not per batch
    if recalibrate_bn:
        recal = batches if recalibration_batches is None else recalibration_batches
        weight_sets = [recalibrate_batchnorm(model, w, _on(recal, device), all_reduce) for w in weight_sets]
    model.eval()
    losses = [0.0] * len(weight_sets)
    wrong = [0] * len(weight_sets)
    count = 0
    try:
        for batch in _on(batches, device):  # one pass over the data for all weight sets
            n = len(batch[0])
            for i, weights in enumerate(weight_sets):
                outputs = functional_call(model, weights, (batch,))
                losses[i] += float(model.loss(outputs, batch)) * n
                if outputs.dim() == 2 and batch[1].dim() == 1:
                    wrong[i] += int((outputs.argmax(1) != batch[1]).sum())
            count += n
    finally:
        model.train(was_training)
    if all_reduce and dist.get_world_size() > 1:
        totals = torch.tensor([*losses, *wrong, count], dtype=torch.float64, device=device)
        dist.all_reduce(totals)  # float64 holds the integer counts exactly
        losses, wrong, count = totals[:len(losses)].tolist(), totals[len(losses):-1].tolist(), int(totals[-1])
    count = max(count, 1)
    return [{'loss': l / count, 'error': w / count} for l, w in zip(losses, wrong)]


def evaluate_losses(
    model: ComposerModel,
    weight_sets: Sequence[Mapping[str, torch.Tensor]],
    batches: Sequence,
    recalibrate_bn: bool = False,
    all_reduce: bool = False,
) -> list[float]:
    """Mean loss of ``model`` under each weight set (see :func:`evaluate`)."""
    return [r['loss'] for r in evaluate(model, weight_sets, batches, recalibrate_bn, all_reduce=all_reduce)]


@torch.no_grad()
def per_batch_losses(
    model: ComposerModel,
    weights: Mapping[str, torch.Tensor],
    batches: Sequence,
    recalibrate_bn: bool = False,
    all_reduce: bool = False,
) -> list[float]:
    """The mean loss of every batch under ``weights`` (eval mode, see :func:`evaluate`).

    With ``recalibrate_bn`` the BatchNorm statistics are recomputed once, on all of ``batches``. ``all_reduce=True``:
    ``batches`` is this rank's share, and every rank returns the losses of all ranks' batches.
    """
    device = next(model.parameters()).device
    weights = {k: v.to(device) for k, v in weights.items()}
    if recalibrate_bn:
        weights = recalibrate_batchnorm(model, weights, _on(batches, device), all_reduce)
    losses = [evaluate(model, [weights], [batch])[0]['loss'] for batch in batches]
    if all_reduce and dist.get_world_size() > 1:
        losses = [loss for share in dist.all_gather_object(losses) for loss in share]
    return losses
