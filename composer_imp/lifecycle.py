"""One training of a level or a branch: build the user's Trainer, check it, fit, record (the level lifecycle).

Used by the level loop (:mod:`composer_imp.level_loop`) for every level and by the branches over a finished run
(:mod:`composer_imp.controls`, :mod:`composer_imp.stability`), so they all check and train a Trainer the same way:

1. :func:`imp_trainer_args`: what the Trainer must be given (the rewind point to load, the level's own checkpoint
   folder, a run name that proves ``**imp_args`` reached the Trainer);
2. :func:`build_level_trainer`: seed every RNG, call ``make_trainer(level, seed, imp_args)``, refuse a Trainer that
   ignored ``imp_args``, holds no ``IMP`` or two, or writes checkpoints elsewhere; set the level's data order;
3. :func:`fit_level`: bind the mask, fit, and collect the level's row and weights; close the Trainer.

Example:
    >>> trainer, imp = build_level_trainer(make_trainer, 1, 17, imp_trainer_args(folder, 1, None, 'x'))  # doctest: +SKIP
    >>> result = fit_level(trainer, imp, 1, mask, None, start_step=imp.rewind_step(trainer.state))   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from composer import Trainer
from composer.core import State
from composer.metrics import CrossEntropy, LossMetric
from composer.utils import dist, reproducibility
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy, MultilabelAccuracy

from composer_imp.data_order import (SEED_STRIDE, ShiftCheckpointedOrder, forget_resumed_position, release_workers,
                                     reseed_data_order, restart_epoch_counters)
from composer_imp.imp import IMP
from composer_imp.masks import Mask, check_mask_matches, sparsity_report, unwrap_model
from composer_imp.run_folder import RunFolder

__all__ = ['MakeTrainer', 'imp_trainer_args', 'build_level_trainer', 'fit_level', 'close_trainer', 'LevelResult']

log = logging.getLogger(__name__)

MakeTrainer = Callable[[int, int, dict], Trainer]
_ACCURACY = (MulticlassAccuracy, BinaryAccuracy, MultilabelAccuracy)


def imp_trainer_args(folder: RunFolder, level: Optional[int], checkpoint_interval: Optional[str], run_name: str,
                     from_rewind: bool = True, data_shift: int = 0) -> dict:
    """The Trainer arguments of one training: ``level=None`` is the pretraining (from initialization, checkpoints
    in ``rewind/checkpoints``); a level loads the rewind point when ``from_rewind`` (every level but level 0 at
    τ = 0) and checkpoints into its own folder. ``data_shift``: how many data seeds the level's order is from the
    pretraining's (a data order the checkpoint carries is moved by as many). Always holds ``run_name``: a Trainer
    whose ``run_name`` differs was not given ``**imp_args`` (:func:`build_level_trainer` refuses it)."""
    args: dict[str, Any] = {'run_name': f'{run_name}-level{level:02d}' if level is not None else f'{run_name}-pretraining'}
    if level is not None and from_rewind:
        args.update(load_path=folder.rewind, load_weights_only=False)
        if data_shift:
            args.update(load_ignore_keys=ShiftCheckpointedOrder(data_shift))
    if checkpoint_interval:
        # A crash between writing a checkpoint and its `latest` link leaves a file autoresume does not know; the
        # resumed run re-creates it, so overwriting it is safe.
        args.update(save_folder=folder.checkpoints(level) if level is not None else folder.pretraining_checkpoints,
                    save_interval=checkpoint_interval, save_num_checkpoints_to_keep=1, autoresume=True,
                    save_overwrite=True)
    return args


def _inside(path: Optional[str], folder: str) -> bool:
    return path is not None and os.path.abspath(path).startswith(os.path.abspath(folder) + os.sep)


def build_level_trainer(make_trainer: MakeTrainer, level: int, seed: int, imp_args: dict,
                        data_seed: int = 0) -> tuple[Trainer, IMP]:
    """Call the user's ``make_trainer`` for ``level`` and check the Trainer it returns before anything trains.

    Seeds every RNG with ``seed`` first (the model's initialization follows it), then checks: a ``Trainer``,
    exactly one :class:`~composer_imp.IMP`, the load path IMP passed (or an autoresume checkpoint inside the
    level's own folder), checkpoints only inside the level's folder. Sets the data order of ``data_seed``; a data
    seed other than 0 also seeds the RNG (augmentation draws) from it, unless a checkpoint brings its own RNG state.
    """
    reproducibility.seed_all(seed)
    try:
        trainer = make_trainer(level, seed, dict(imp_args))
    except RuntimeError as e:  # torch's strict load of the rewind point or a level checkpoint
        if 'size mismatch' not in str(e) and 'Missing key' not in str(e) and 'Unexpected key' not in str(e):
            raise
        raise ValueError(f'Level {level}: the model make_trainer built does not fit the run\'s checkpoint '
                         f'{imp_args.get("load_path")} (its parameter names or shapes changed): '
                         f'{" ".join(str(e).split())[:600]}. Build the same model at every level, or start a new '
                         'run (another save_folder or overwrite).') from None
    if not isinstance(trainer, Trainer):
        raise TypeError(f'make_trainer(level, seed, imp_args) must return a composer.Trainer; it returned '
                        f'{type(trainer).__name__}. End it with `return Trainer(..., **imp_args)`.')
    if 'run_name' in imp_args and trainer.state.run_name != imp_args['run_name']:
        trainer.close()
        raise ValueError(f'Level {level}: the Trainer make_trainer returned was not given imp_args (its run_name is '
                         f'{trainer.state.run_name!r}, imp_args set {imp_args["run_name"]!r}). Pass **imp_args to '
                         'Trainer(...) and drop your own run_name, load_path and autoresume: they carry the rewind '
                         'point and the level\'s checkpoints. Nothing was trained.')
    imps = [a for a in trainer.state.algorithms if isinstance(a, IMP)]
    if len(imps) != 1:
        names = [type(a).__name__ for a in imps]
        trainer.close()
        raise ValueError(f'The Trainer make_trainer returned has {len(imps)} IMP components {names}; put exactly one '
                         'IMP(...) or AdaptiveIMP(...) in its algorithms=[...].')
    checkpoints = imp_args.get('save_folder')
    loaded, expected = trainer.state.load_path, imp_args.get('load_path')
    if not (loaded == expected or (checkpoints and _inside(loaded, checkpoints))):
        trainer.close()
        raise ValueError(f'Level {level}: the Trainer loaded {loaded!r}, but IMP passed load_path={expected!r}. Pass '
                         '**imp_args to Trainer(...) and drop your own load_path / autoresume: each level loads the '
                         'rewind point and resumes from its own checkpoints.')
    saver = getattr(trainer, '_checkpoint_saver', None)
    if saver is not None and not (checkpoints and os.path.abspath(saver.folder) == os.path.abspath(checkpoints)):
        trainer.close()
        raise ValueError(f'Level {level}: the Trainer would write checkpoints to {saver.folder!r}, outside the level '
                         f'folder. Drop save_folder from your Trainer(...) and set checkpoint_interval= in find_ticket: '
                         'each level then checkpoints into its own folder and resumes from it.')
    state = trainer.state
    reseed_data_order(state.train_dataloader, data_seed)
    if data_seed:
        reproducibility.seed_all((seed + SEED_STRIDE * data_seed + dist.get_global_rank()) % 2**32)
    restart_epoch_counters(state.train_dataloader, *(e.dataloader.dataloader for e in state.evaluators))
    if not state.dataset_resumption.get('train'):  # no checkpoint brought a position: start at the beginning
        forget_resumed_position(state.train_dataloader)
    return trainer, imps[0]


@dataclass
class LevelResult:
    """What one fit of a level produced."""
    row: dict
    weights: dict


def _metric(state: State, name: Optional[str], kinds: tuple, what: str) -> Optional[float]:
    values = {k: float(v) for k, v in state.eval_metric_values.items()}
    if name is not None:
        if name not in values:
            raise ValueError(f'{what}={name!r} is not an eval metric of this Trainer; it reported {sorted(values)}.')
        return values[name]
    for metrics in state.eval_metrics.values():
        for key, metric in metrics.items():
            if isinstance(metric, kinds) and key in values:
                return values[key]
    return None


def _chance_accuracy(state: State) -> Optional[float]:
    for metrics in state.eval_metrics.values():
        for metric in metrics.values():
            classes = getattr(metric, 'num_classes', None)
            if isinstance(metric, _ACCURACY) and classes:
                return 1.0 / int(classes)
    return None


def fit_level(trainer: Trainer, imp: IMP, level: int, mask: Mask, rewind_path: str, start_step: int,
              metric: Optional[str] = None, loss_metric: Optional[str] = None) -> LevelResult:
    """One level's lifecycle after its Trainer is built: bind the mask, fit, collect the row, close the Trainer.

    Shared by the levels and the controls. ``start_step``: the step the level starts from (τ, or 0 for level 0 at
    τ = 0). ``metric`` / ``loss_metric``: the eval metric names recorded as the level's accuracy and loss (default:
    the first accuracy metric and the first cross-entropy/loss metric).
    """
    start = time.perf_counter()
    state = trainer.state
    try:
        check_mask_matches(dict(unwrap_model(state.model).named_parameters()), mask, source=f'level {level} mask')
    except ValueError as e:
        trainer.close()
        raise ValueError(f'{e} make_trainer must build the same model at every level.') from None
    imp.start_level(level, mask, rewind_path)
    loaded_at = int(state.timestamp.batch)  # > τ when Composer autoresumed an interrupted level
    if state.load_path is not None and loaded_at == start_step and (start_step == 0 or not imp.rewind_optimizer):
        # A fresh optimizer from τ (OpenLTH). At τ = 0 always: the pretraining's optimizer had no state yet, and what
        # the checkpoint holds is an artifact of saving it (torch fills momentum with weight_decay * w).
        for optimizer in state.optimizers:
            optimizer.state.clear()
    end = state.max_duration
    if end is not None and state.timestamp.get(end.unit) >= end:
        # Autoresumed from the level's last checkpoint: it finished training before its files were written.
        trainer.eval()
    else:
        trainer.fit()
    fit_seconds = time.perf_counter() - start
    accuracy = _metric(state, metric, _ACCURACY, 'metric')
    loss = _metric(state, loss_metric, (CrossEntropy, LossMetric), 'loss_metric')
    weights = {k: v.detach().cpu().clone() for k, v in unwrap_model(state.model).state_dict().items()}
    report = sparsity_report(mask)
    steps = int(state.timestamp.batch) - start_step
    row = {
        'level': level, 'weights_remaining': report['weights_remaining'], 'remaining': report['remaining'],
        'prunable': report['total'], 'accuracy': accuracy, 'loss': loss,
        'eval': {k: float(v) for k, v in state.eval_metric_values.items()},
        'steps': steps, 'start_step': start_step,
        'resumed_from_step': loaded_at if loaded_at != start_step else None,
        'fit_seconds': fit_seconds, 'nonzero_at_start': imp.nonzero_at_start, **imp.statistics.result(),
    }
    chance = _chance_accuracy(state)
    row['collapsed'] = bool(accuracy is not None and chance is not None and accuracy <= 1.5 * chance)
    if row['collapsed'] and dist.get_global_rank() == 0:
        log.warning('level %02d accuracy %.2f%% is at chance level (%.1f%%)', level, 100 * accuracy, 100 * chance)
    trainer.logger.log_metrics({'imp/level': level, 'imp/weights_remaining': row['weights_remaining'],
                                **({'imp/accuracy': accuracy} if accuracy is not None else {}),
                                **({'imp/loss': loss} if loss is not None else {})})
    close_trainer(trainer)
    return LevelResult(row, weights)


def close_trainer(trainer: Trainer) -> None:
    """Close a fitted Trainer, first releasing the workers of its loaders: the next Trainer reuses them."""
    state = trainer.state
    for loader in (state.train_dataloader, *(e.dataloader.dataloader for e in state.evaluators)):
        release_workers(loader)
    trainer.close()
