"""``IMP``: iterative magnitude pruning with weight rewinding as a Composer algorithm (Algorithm 1 of the paper).

Put ``IMP(...)`` in the ``algorithms`` of the Trainer your recipe builds, and call
:func:`composer_imp.find_ticket` where you called ``trainer.fit()``: the level loop builds your Trainer once per
level and tells the component which level it is in. Inside a level the component

* in the pretraining (Algorithm 1, phase 1): saves the rewind point, a full Composer checkpoint at step τ
  (:class:`~composer_imp.rewind.RewindCheckpoint`), and stops there;
* at level 0 (dense, trained from ``w_τ``): records the per-batch training losses of the last epoch
  (:class:`~composer_imp.loss_statistics.LossStatistics`: the dense loss and ε);
* at level L ≥ 1: keeps the level's mask exactly (:class:`~composer_imp.keep_mask.KeepMask`): pruned weights,
  their gradients and optimizer state stay ``0.0`` after every step.

The mask binds at ``FIT_START`` to the model as the Trainer holds it, after Composer's own surgery (BlurPool,
SqueezeExcite, ChannelsLast, ...), so masks, checkpoints and weight files share the post-surgery names.

:func:`apply_imp` is the functional form of one IMP step: (prune a solution by magnitude,) rewind the model and
apply the mask, ``mask ⊙ w_τ``; ``IMP`` calls it when a level starts.

Example:
    >>> import torch
    >>> from composer_imp import apply_imp, full_mask
    >>> net = torch.nn.Linear(4, 2)
    >>> w_tau = {k: v.clone() for k, v in net.state_dict().items()}
    >>> mask = apply_imp(net, solution=net.state_dict(), mask=full_mask(net), ratio=0.5, rewind_weights=w_tau)
    >>> int(mask['weight'].sum()), int((net.weight != 0).sum())
    (4, 4)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from composer.core import Algorithm, Event, State, Time
from composer.loggers import Logger
from torch import nn

from composer_imp.data_order import DATA_ORDERS
from composer_imp.keep_mask import KeepMask, apply_keep_mask
from composer_imp.loss_statistics import LossStatistics
from composer_imp.masks import Mask, full_mask, magnitude_prune, unwrap_model
from composer_imp.faults import LossGuard
from composer_imp.rewind import RewindCheckpoint, parse_rewind, rewind_step

__all__ = ['IMP', 'apply_imp', 'INCOMPATIBLE_ALGORITHMS']

# Composer algorithms that cannot train under a fixed mask on named weights, with the reason (docs/how-it-works.md).
INCOMPATIBLE_ALGORITHMS = {
    'EMA': 'its averaged copy of the weights keeps pruned weights non-zero (and the rewind point carries the dense '
           'average), and which copy the model holds after fit depends on checkpoint timing',
    'SWA': 'it overwrites the weights with an average that includes values from before the mask',
    'Factorize': 'it replaces Conv/Linear layers by freshly initialized low-rank factors, so the weights a mask '
                 'names no longer exist',
    'WeightStandardization': 'a standardized zero is not zero: the forward pass uses (W - mean) / std, so pruned '
                             'weights still contribute',
    'SAM': 'it moves every weight, pruned ones included, away from zero inside each step, and does not resume exactly',
    'RandAugment': 'it adds its transform to the training dataset each time a Trainer is built, so with loaders reused '
                   'across levels the augmentation would stack; put RandAugmentTransform in your dataset\'s transform',
    'AugMix': 'it adds its transform to the training dataset each time a Trainer is built, so with loaders reused '
              'across levels the augmentation would stack; put AugmentAndMixTransform in your dataset\'s transform',
}


def apply_imp(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    *,
    solution: Optional[Mapping[str, torch.Tensor]] = None,
    ratio: Optional[float] = None,
    rewind_weights: Optional[Mapping[str, torch.Tensor]] = None,
    scope: str = 'global',
    optimizers: Optional[Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer]]] = None,
) -> Mask:
    """One IMP step on ``model``: (prune,) rewind, apply the mask. What :class:`IMP` does when a level starts.

    Args:
        model: the network (its parameter names are those of the mask and of ``solution``).
        mask: the current mask (``{name: bool tensor}``, ``True`` = kept).
        solution: the trained weights ``w_L`` whose magnitudes decide, with ``ratio``: prune ``ratio`` of ``mask``'s
            remaining weights (the new mask is nested in ``mask``). ``None``: apply ``mask`` as it is (the level loop
            has chosen it already).
        ratio: fraction of the remaining weights to prune, in (0, 1), with ``solution``.
        rewind_weights: ``w_τ`` to load into ``model`` before masking (``None``: keep the model's weights, e.g. the
            rewind point a Trainer loaded).
        scope: ``'global'`` (the paper) or ``'layerwise'`` magnitude pruning.
        optimizers: optimizers whose per-weight state is masked too.

    Returns:
        The mask now applied; ``model`` holds ``mask ⊙ w_τ``.
    """
    if solution is not None:
        if ratio is None:
            raise ValueError('apply_imp: give the ratio to prune together with the solution whose magnitudes decide.')
        mask = magnitude_prune(solution, mask, ratio, scope)
    if rewind_weights is not None:
        model.load_state_dict(rewind_weights)
    apply_keep_mask(model, mask, optimizers)
    return dict(mask)


class IMP(Algorithm):
    """Iterative magnitude pruning with weight rewinding: one object in your Trainer's ``algorithms``.

    Args:
        ratio: fraction of the *remaining* prunable weights removed at each level, in (0, 1) (paper: 0.2).
        rewind: the rewind step τ, a Composer time in batches or epochs (``'2000ba'``, ``'1ep'``, ``0``).
        ignore: parameter or module names never pruned (checked against the model: a typo is an error).
        scope: ``'global'`` magnitude pruning across layers (the paper) or ``'layerwise'``.
        rewind_optimizer: restore the optimizer state (momentum, Adam moments) at τ with the weights. Default
            ``False``: every level starts with a fresh optimizer, as OpenLTH builds one per level (the paper rewinds
            the weights only); the learning-rate schedule continues from τ either way.
        data_order: ``'new'`` (default; OpenLTH leaves its data-order seed unset, so every training draws a new
            order): each level trains with its own data order; ``'replay'``: every level replays the pretraining's
            data order and RNG from τ, so levels share their SGD noise.

    The level loop (:func:`composer_imp.find_ticket`) calls :meth:`start_level` before each ``fit``; fitting a
    Trainer that holds an ``IMP`` without the loop is an error naming the fix.

    Example:
        >>> imp = IMP(ratio=0.2, rewind='1ep')
        >>> imp
        IMP(ratio=0.2, rewind='1ep', ignore=[], scope='global', rewind_optimizer=False, data_order='new')
    """

    def __init__(self, ratio: float = 0.2, rewind: Union[str, int, Time] = '0ba', ignore: Iterable[str] = (),
                 scope: str = 'global', rewind_optimizer: bool = False, data_order: str = 'new'):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
            raise ValueError(f'{type(self).__name__} ratio must lie strictly between 0 and 1 (fraction of the remaining '
                             f'weights pruned per level, e.g. 0.2); got {ratio!r}.')
        if scope not in ('global', 'layerwise'):
            raise ValueError(f"{type(self).__name__} scope must be 'global' or 'layerwise'; got {scope!r}.")
        if isinstance(ignore, str):
            raise ValueError(f'{type(self).__name__} ignore must be a list of names; got the string {ignore!r} '
                             f'(write [{ignore!r}]).')
        if not isinstance(rewind_optimizer, bool):
            raise ValueError(f'{type(self).__name__} rewind_optimizer must be true or false; got {rewind_optimizer!r}.')
        if data_order not in DATA_ORDERS:
            raise ValueError(f'{type(self).__name__} data_order must be one of {list(DATA_ORDERS)} (\'new\': each level '
                             f'draws its own order; \'replay\': levels replay the pretraining\'s); got {data_order!r}.')
        parse_rewind(rewind)
        self.rewind_optimizer = rewind_optimizer
        self.data_order = data_order
        self.ratio = float(ratio)
        self.rewind = rewind
        self.ignore = list(ignore)
        self.scope = scope
        self.level: Optional[int] = None
        self.pretraining = False
        self.mask: Optional[Mask] = None
        self.statistics = LossStatistics()
        self._keep: Optional[KeepMask] = None
        self._rewind_saver: Optional[RewindCheckpoint] = None
        self._guard = LossGuard()
        self._loaded: Optional[dict] = None  # the state a checkpoint brought, checked once the level is known
        self.nonzero_at_start: Optional[dict[str, int]] = None

    def settings(self) -> dict[str, Any]:
        """What defines the run (recorded in ``config.yaml``; a resumed run must have the same)."""
        return {'name': type(self).__name__, 'ratio': self.ratio, 'rewind': str(self.rewind),
                'ignore': list(self.ignore), 'scope': self.scope, 'rewind_optimizer': self.rewind_optimizer,
                'data_order': self.data_order}

    def __repr__(self) -> str:
        kwargs = {k: v for k, v in self.settings().items() if k != 'name'}
        return f'{type(self).__name__}({", ".join(f"{k}={v!r}" for k, v in kwargs.items())})'

    def rewind_step(self, state: State) -> int:
        """τ in optimizer steps of the Trainer holding ``state`` (epochs counted with its training loader)."""
        return rewind_step(self.rewind, state)

    def check(self, state: State) -> None:
        """Refuse, before any training, what cannot train under a mask (called by the level loop at level 0)."""
        for algorithm in state.algorithms:
            reason = INCOMPATIBLE_ALGORITHMS.get(type(algorithm).__name__)
            if reason:
                raise ValueError(f'{type(algorithm).__name__} cannot be combined with {type(self).__name__}: {reason}. '
                                 f'Remove it from algorithms.')
        if getattr(state, 'fsdp_config', None) is not None or getattr(state, 'fsdp_enabled', False):
            raise ValueError(f'{type(self).__name__} does not support FSDP: masks are kept on whole, unsharded weights '
                             'by name. Train with DDP (the default under `composer -n N`).')
        full_mask(unwrap_model(state.model), self.ignore)  # an ignore name that matches nothing is an error

    def choose_ratio(self, state: State, solution: Mapping[str, torch.Tensor], mask: Mask, dense_row: dict,
                     dense_weights: Callable[[], dict], target_sparsity: Optional[float] = None,
                     level_row: Optional[dict] = None) -> tuple[float, Optional[dict]]:
        """The fraction of the remaining weights to prune from ``solution`` (``w_L``), and a report (or ``None``).

        Fixed-ratio IMP prunes ``ratio`` at every level; :class:`~composer_imp.AdaptiveIMP` sweeps.
        """
        return self.ratio, None

    # ---- set by the level loop ---------------------------------------------------------------
    def start_pretraining(self, rewind_path: str) -> None:
        """Before ``fit`` of the pretraining (Algorithm 1, phase 1): train the dense network from initialization to
        τ, save the rewind point at ``rewind_path`` and stop."""
        self.level, self.mask, self.pretraining, self._keep = 0, None, True, None
        self._rewind_saver = RewindCheckpoint(self.rewind, rewind_path, keep_rng=self.data_order == 'replay',
                                              stop=True)
        self._guard = LossGuard(0)

    def start_level(self, level: int, mask: Mask, rewind_path: Optional[str]) -> None:
        """Bind this level's mask (``level ≥ 1``) before ``fit``. ``rewind_path``: at level 0 with τ = 0, where to
        save the rewind point (the level is then the run from initialization); otherwise ``None``."""
        self.level, self.mask, self.pretraining = level, mask, False
        self._keep = KeepMask(mask) if level > 0 else None
        self._rewind_saver = (RewindCheckpoint(self.rewind, rewind_path, keep_rng=self.data_order == 'replay')
                              if level == 0 and rewind_path else None)
        self._guard = LossGuard(level)
        loaded = self._loaded or {}
        resumed = loaded.get('level') == level and not loaded.get('pretraining', False)
        # The loss statistics continue only within the same level (autoresumed); a level from τ starts empty.
        self.statistics.load_state_dict(loaded.get('statistics', {}) if resumed else {})
        if resumed and loaded.get('mask') is not None:
            # Composer autoresumed this level from one of its checkpoints: it must be the same mask.
            self._keep.load_state_dict({'mask': loaded['mask']})

    # ---- Composer ------------------------------------------------------------------------------
    def match(self, event: Event, state: State) -> bool:
        return event != Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if self.level is None:
            if event == Event.FIT_START:
                raise RuntimeError(f'{type(self).__name__} runs its levels through composer_imp.find_ticket(make_trainer, '
                                   'save_folder, ...): call that instead of trainer.fit() (see the README).')
            return
        if self._keep is not None and event == Event.FIT_START:
            # The level starts from m_L ⊙ w_τ (Composer loaded w_τ); KeepMask keeps it exact from here on.
            apply_imp(state.model, self.mask, optimizers=state.optimizers)
            self._keep.bind(state)
        elif self._keep is not None and self._keep.match(event, state):
            self._keep.apply(event, state, logger)
        if event == Event.FIT_START:  # what this level actually starts from, after the mask is applied
            params = dict(unwrap_model(state.model).named_parameters())
            self.nonzero_at_start = {k: int(torch.count_nonzero(params[k])) for k in self.mask or {}}
        if self._rewind_saver is not None:
            self._rewind_saver.run_event(event, state, logger)
        self.statistics.run_event(event, state, logger)
        self._guard.run_event(event, state, logger)

    def state_dict(self) -> dict[str, Any]:
        # Travels in Composer checkpoints: a resumed level checks its mask and keeps the losses seen before.
        return {'repr': repr(self), 'level': self.level, 'pretraining': self.pretraining,
                'mask': self.mask if self.level else None, 'statistics': self.statistics.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loaded = state  # applied by start_level, once the level is known
