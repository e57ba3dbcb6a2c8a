"""Pruning masks: what is prunable, magnitude pruning, sparsity accounting, mask files.

Everything here works on a plain :class:`torch.nn.Module` and knows nothing of Composer.
A mask is a ``{parameter_name: bool tensor}`` dict with one entry per prunable weight;
``True`` means the weight is kept.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> mask = full_mask(net)
    >>> sorted(mask)
    ['0.weight', '2.weight']
    >>> mask = magnitude_prune(net, mask, fraction=0.5)
    >>> sparsity_report(mask)['weights_remaining']
    0.5
"""

from __future__ import annotations

import difflib
import os
from typing import Iterable, Mapping, Optional

import torch
from torch import nn

__all__ = [
    'Mask',
    'prunable_parameters',
    'full_mask',
    'magnitude_prune',
    'count_remaining',
    'sparsity_report',
    'apply_mask_to_model',
    'save_mask',
    'load_mask',
    'check_mask_matches',
    'unwrap_model',
    'PRUNABLE_MODULES',
]

Mask = dict[str, torch.Tensor]

# As in the paper (App. C, following Frankle & Carbin): the weights of convolutional and
# fully-connected layers are prunable; biases and normalization layers never are.
PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel wrappers so parameter names do not depend on the launcher."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _resolve_ignore(model: nn.Module, candidates: dict[str, nn.Parameter], ignore: Iterable[str]) -> set[str]:
    """Turn ignore entries (parameter names or module names) into parameter names, refusing unknown ones."""
    module_names = {name for name, _ in model.named_modules() if name}
    all_params = {name for name, _ in model.named_parameters()}
    ignored: set[str] = set()
    for entry in ignore:
        if entry in candidates:
            ignored.add(entry)
        elif entry in module_names and f'{entry}.weight' in candidates:
            ignored.add(f'{entry}.weight')
        elif entry in all_params or entry in module_names:
            raise ValueError(
                f'ignore entry {entry!r} names a parameter or module that is never pruned '
                f'(only the weights of {", ".join(m.__name__ for m in PRUNABLE_MODULES)} layers are prunable). '
                f'Prunable weights are: {", ".join(sorted(candidates))}. Remove {entry!r} from IMP(ignore=...).',
            )
        else:
            close = difflib.get_close_matches(entry, sorted(candidates) + sorted(module_names), n=3, cutoff=0.5)
            hint = f' Did you mean {", ".join(repr(c) for c in close)}?' if close else ''
            raise ValueError(
                f'ignore entry {entry!r} matches no parameter or module of the model.{hint} '
                f'Names are those of model.named_parameters() / named_modules() of the unwrapped Composer model '
                f'(a ComposerClassifier prefixes its network with "module."). '
                f'Prunable weights are: {", ".join(sorted(candidates))}.',
            )
    return ignored


def prunable_parameters(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The prunable weights of ``model``, by parameter name, in ``named_parameters`` order.

    Args:
        model: the network (DDP wrappers are stripped first).
        ignore: parameter names (``'module.fc.weight'``) or module names (``'module.fc'``) to leave dense.
            Every entry must match a prunable weight: a name that matches nothing raises
            ``ValueError`` instead of silently pruning everything.

    Returns:
        ``{name: parameter}`` for the weights of ``Conv*`` and ``Linear`` modules not in ``ignore``.
    """
    model = unwrap_model(model)
    candidates: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES) and getattr(module, 'weight', None) is not None:
            candidates[f'{module_name}.weight' if module_name else 'weight'] = module.weight
    # Keep named_parameters order (it is the order a user reads in print(model)).
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    candidates = dict(sorted(candidates.items(), key=lambda kv: order.get(kv[0], len(order))))
    ignored = _resolve_ignore(model, candidates, ignore)
    params = {name: p for name, p in candidates.items() if name not in ignored}
    if not params:
        raise ValueError('The model has no prunable weights left (Conv/Linear weights minus the ignore list).')
    return params


def full_mask(model: nn.Module, ignore: Iterable[str] = ()) -> Mask:
    """An all-``True`` mask over the prunable weights of ``model`` (level 0, dense)."""
    # Contiguous whatever the weight's memory format (ChannelsLast): masks are flattened and saved as they are.
    return {name: torch.ones(p.shape, dtype=torch.bool) for name, p in prunable_parameters(model, ignore).items()}


def count_remaining(mask: Mapping[str, torch.Tensor]) -> int:
    """Number of weights the mask keeps."""
    return int(sum(int(m.sum()) for m in mask.values()))


def _prune_count(fraction: float, remaining: int) -> int:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f'The pruning fraction must lie in (0, 1); got {fraction}. It is the fraction of the '
                         'remaining weights to remove, e.g. 0.2 removes 20%.')
    return int(round(fraction * remaining))


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest scores; ties go to the lower index (stable sort), so every rank agrees."""
    return torch.sort(scores, stable=True).indices[:k]


def magnitude_prune(
    weights: nn.Module | Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    fraction: float,
    scope: str = 'global',
) -> Mask:
    """Prune the smallest-magnitude ``fraction`` of the weights ``mask`` still keeps.

    Exactly ``round(fraction * remaining)`` weights are removed (per layer with ``scope='layerwise'``);
    already-pruned weights stay pruned, so the new mask is nested in the old one.

    Args:
        weights: a model or a state dict holding every weight named in ``mask``.
        mask: the current mask (``True`` = kept).
        fraction: fraction of the *remaining* weights to prune, in (0, 1).
        scope: ``'global'`` ranks all prunable weights together (the paper's choice);
            ``'layerwise'`` prunes ``fraction`` of each layer separately.

    Returns:
        A new mask on the CPU.
    """
    if scope not in ('global', 'layerwise'):
        raise ValueError(f"scope must be 'global' or 'layerwise'; got {scope!r}.")
    if isinstance(weights, nn.Module):
        source = dict(unwrap_model(weights).named_parameters())
    else:
        source = dict(weights)
    missing = [name for name in mask if name not in source]
    if missing:
        raise ValueError(f'The weights have no entry for masked parameters {missing}.')
    magnitudes = {name: source[name].detach().abs().float().cpu().flatten() for name in mask}
    new_mask = {name: m.detach().cpu().clone().bool() for name, m in mask.items()}

    if scope == 'layerwise':
        for name, m in new_mask.items():
            flat = m.view(-1)
            alive = flat.nonzero().squeeze(1)
            k = _prune_count(fraction, alive.numel())
            flat[alive[_smallest(magnitudes[name][alive], k)]] = False
        return new_mask

    flats = [new_mask[name].view(-1) for name in new_mask]
    alive_idx = [f.nonzero().squeeze(1) for f in flats]
    scores = torch.cat([magnitudes[name][idx] for name, idx in zip(new_mask, alive_idx)])
    k = _prune_count(fraction, scores.numel())
    chosen = _smallest(scores, k)
    offsets = torch.tensor([0] + [idx.numel() for idx in alive_idx]).cumsum(0)
    for layer, (flat, idx) in enumerate(zip(flats, alive_idx)):
        lo, hi = int(offsets[layer]), int(offsets[layer + 1])
        local = chosen[(chosen >= lo) & (chosen < hi)] - lo
        flat[idx[local]] = False
    return new_mask


def sparsity_report(mask: Mapping[str, torch.Tensor]) -> dict:
    """Per-layer and total counts: ``{'total', 'remaining', 'weights_remaining', 'layers': {name: {...}}}``."""
    layers = {}
    for name, m in mask.items():
        kept = int(m.sum())
        layers[name] = {'total': m.numel(), 'remaining': kept, 'weights_remaining': kept / m.numel()}
    total = sum(layer['total'] for layer in layers.values())
    remaining = sum(layer['remaining'] for layer in layers.values())
    return {'total': total, 'remaining': remaining, 'weights_remaining': remaining / max(total, 1), 'layers': layers}


@torch.no_grad()
def apply_mask_to_model(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``model`` in place (``mask`` is moved to each weight's device)."""
    params = dict(unwrap_model(model).named_parameters())
    check_mask_matches(params, mask)
    for name, m in mask.items():
        p = params[name]
        p.mul_(m.to(device=p.device, dtype=p.dtype))


def check_mask_matches(params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], source: str = 'mask') -> None:
    """Raise ``ValueError`` naming every mask entry whose name or shape does not fit the model."""
    problems = []
    for name, m in mask.items():
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            problems.append(f'{name!r} is not a parameter of the model' + (f' (closest: {close[0]!r})' if close else ''))
        elif tuple(params[name].shape) != tuple(m.shape):
            problems.append(f'{name!r} has shape {tuple(m.shape)} in the {source} but {tuple(params[name].shape)} in the model')
    if problems:
        raise ValueError(f'The {source} does not match the model: ' + '; '.join(problems) +
                         '. Was it made for another model or before model surgery (e.g. BlurPool)?')


def save_mask(mask: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``mask`` as a ``{name: bool tensor}`` file that ``torch.load(path, weights_only=True)`` reads."""
    torch.save({name: m.detach().cpu().bool() for name, m in mask.items()}, path)


def load_mask(path: str | os.PathLike, model: Optional[nn.Module] = None) -> Mask:
    """Read a mask written by :func:`save_mask` (safely: ``weights_only=True``); check it against ``model`` if given."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'No mask file at {path}.')
    mask = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(mask, dict) or not all(isinstance(v, torch.Tensor) and v.dtype == torch.bool for v in mask.values()):
        raise ValueError(f'{path} is not a mask file: expected a dict of bool tensors keyed by parameter name.')
    if model is not None:
        check_mask_matches(dict(unwrap_model(model).named_parameters()), mask, source=f'mask {path}')
    return mask
