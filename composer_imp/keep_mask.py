"""A Composer Algorithm that keeps a pruning mask exactly during training.

Composer runs the forward and backward passes inside the optimizer's closure and steps the
optimizer after ``AFTER_TRAIN_BATCH``, then fires ``BATCH_END``. So the algorithm

* zeroes pruned weights and their optimizer state at ``FIT_START`` (after any checkpoint load),
* zeroes their gradients at ``AFTER_TRAIN_BATCH`` (after all microbatches, after AMP unscaling,
  after the DDP all-reduce, before the step), so momentum and Adam moments never see them,
* zeroes the weights and optimizer state again at ``BATCH_END`` (after the step), because
  coupled or decoupled weight decay, Adam's epsilon or any other optimizer could move them.

A pruned weight is therefore exactly ``0.0`` after every step, whatever the optimizer.

Example:
    >>> from composer import Trainer
    >>> from composer_imp import KeepMask, full_mask, magnitude_prune
    >>> mask = magnitude_prune(model, full_mask(model), fraction=0.2)   # doctest: +SKIP
    >>> trainer = Trainer(model=model, algorithms=[KeepMask(mask)], ...)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger
from torch import nn

from composer_imp.masks import check_mask_matches, count_remaining, unwrap_model

__all__ = ['KeepMask', 'apply_keep_mask', 'mask_gradients', 'mask_params_and_state']


def _pairs(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    params = dict(unwrap_model(model).named_parameters())
    check_mask_matches(params, mask)
    return [(params[name], m.to(device=params[name].device, dtype=params[name].dtype)) for name, m in mask.items()]


@torch.no_grad()
def mask_params_and_state(pairs: Sequence[tuple[nn.Parameter, torch.Tensor]], optimizers: Iterable[torch.optim.Optimizer]) -> None:
    params = [p for p, _ in pairs]
    masks = [m for _, m in pairs]
    torch._foreach_mul_(params, masks)
    state_tensors, state_masks = [], []
    for optimizer in optimizers:
        for p, m in pairs:
            for value in optimizer.state.get(p, {}).values():
                # Momentum buffers, Adam moments, ...: every per-weight tensor; scalars like `step` are left alone.
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    state_tensors.append(value)
                    state_masks.append(m if value.dtype == m.dtype else m.to(value.dtype))
    if state_tensors:
        torch._foreach_mul_(state_tensors, state_masks)


@torch.no_grad()
def mask_gradients(pairs: Sequence[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Zero the gradients of pruned weights (``pairs`` as bound by :class:`KeepMask`)."""
    grads, masks = [], []
    for p, m in pairs:
        if p.grad is not None:
            grads.append(p.grad)
            masks.append(m)
    if grads:
        torch._foreach_mul_(grads, masks)


def apply_keep_mask(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    optimizers: Optional[torch.optim.Optimizer | Sequence[torch.optim.Optimizer]] = None,
) -> None:
    """Functional form: zero pruned weights, their gradients and their optimizer state in place.

    Args:
        model: the model (DDP wrappers are stripped; names are those of the unwrapped model).
        mask: ``{parameter_name: bool tensor}``, ``True`` = kept.
        optimizers: optimizer(s) whose per-weight state is masked too.

    Example:
        >>> apply_keep_mask(model, mask, optimizer)  # doctest: +SKIP
    """
    pairs = _pairs(model, mask)
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    mask_gradients(pairs)
    mask_params_and_state(pairs, optimizers or [])


class KeepMask(Algorithm):
    """Keep a pruning mask exactly: pruned weights, gradients and optimizer state stay ``0.0``.

    Works in any Composer ``Trainer``, with any optimizer, precision, gradient accumulation and
    under DDP (masks are keyed by the unwrapped model's parameter names, so ``module.`` prefixes
    added by DDP do not matter). Build the mask after any model surgery (e.g. ``BlurPool``).

    Args:
        mask: ``{parameter_name: bool tensor}`` from :func:`composer_imp.masks.magnitude_prune`.

    Example:
        >>> trainer = Trainer(model=model, algorithms=[KeepMask(mask)], ...)  # doctest: +SKIP
    """

    def __init__(self, mask: Mapping[str, torch.Tensor]):
        if not mask:
            raise ValueError('KeepMask needs a non-empty mask ({parameter_name: bool tensor}).')
        self.mask = {name: m.detach().cpu().bool() for name, m in mask.items()}
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []

    def __repr__(self) -> str:
        return f'KeepMask(remaining={count_remaining(self.mask)}, layers={len(self.mask)})'

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.FIT_START, Event.AFTER_TRAIN_BATCH, Event.BATCH_END)

    def bind(self, state: State) -> None:
        """Bind the mask to the model's parameters (once per fit: they exist on their final device, after surgery
        and DDP wrapping), without masking them."""
        self._pairs = _pairs(state.model, self.mask)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.FIT_START:
            self.bind(state)
            mask_params_and_state(self._pairs, state.optimizers)
        elif event == Event.AFTER_TRAIN_BATCH:
            mask_gradients(self._pairs)
        else:
            mask_params_and_state(self._pairs, state.optimizers)

    def state_dict(self) -> dict[str, Any]:
        # The mask travels with every checkpoint so a resumed run can check it trains the same mask.
        return {'repr': repr(self), 'mask': self.mask}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get('mask')
        if saved is None:
            return
        if set(saved) != set(self.mask) or any(not torch.equal(saved[k].cpu(), self.mask[k]) for k in saved):
            raise ValueError(
                'The checkpoint being loaded was trained with a different KeepMask mask than the one given to this '
                'Trainer. Resume a level with the mask it was trained under (its level_XX/mask.pt).',
            )
