"""The level loop: IMP with weight rewinding around the user's own Trainer (Algorithm 1 of the paper).

:func:`find_ticket` replaces ``trainer.fit()``. Your recipe builds its Trainer in a function
``make_trainer(level, seed, imp_args)`` that passes ``**imp_args`` to ``Trainer(...)`` and has an
:class:`~composer_imp.IMP` (or :class:`~composer_imp.AdaptiveIMP`) among its algorithms. Then, read top to bottom:

1. pretraining (Algorithm 1, phase 1): build the Trainer, train the dense network from initialization to τ;
   ``IMP`` saves the rewind point there and stops (nothing to do at τ = 0);
2. level 0: the dense network trained from ``w_τ`` (at τ = 0, from initialization); ``IMP`` records ε;
3. level L ≥ 1: ratio = ``IMP.ratio``, or AdaptiveIMP's sweep at ``w_{L-1}``; ``m_L`` = prune ``w_{L-1}``
   (nested in ``m_{L-1}``); build the Trainer with ``imp_args`` that load the rewind point; ``IMP`` binds
   ``m_L`` to the model as Composer holds it and keeps it exact; fit;
4. after every level: ``level_XX/{mask.pt, selection.json, weights.pt, level.json}`` and ``summary.json``
   (:mod:`composer_imp.artifacts`); a re-run resumes.

Every level starts like OpenLTH's: from ``w_τ`` at step τ of the learning-rate schedule, with a fresh optimizer
(``IMP(rewind_optimizer=True)`` restores the momentum at τ) and its own data order (``IMP(data_order='replay')``
replays the pretraining's).

What ``imp_args`` holds: for a level from the rewind point ``load_path`` (the rewind point) and
``load_weights_only=False``; with ``checkpoint_interval`` also ``save_folder`` (the level's own), ``save_interval``,
``autoresume``, ``run_name``.
A Trainer that did not load what was passed, or that would write checkpoints elsewhere, is refused.

Example:
    >>> from composer import Trainer
    >>> from composer_imp import IMP, find_ticket
    >>> def make_trainer(level, seed, imp_args):
    ...     model = MyModel()                                               # doctest: +SKIP
    ...     return Trainer(model=model, train_dataloader=train_dl, max_duration='10ep',
    ...                    algorithms=[IMP(ratio=0.2, rewind='1ep')], seed=seed, **imp_args)
    >>> rows = find_ticket(make_trainer, 'runs/mine', levels=8)               # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from composer import Trainer
from composer.core import State, Time
from composer.metrics import CrossEntropy, LossMetric
from composer.utils import dist, reproducibility
from omegaconf import OmegaConf
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy, MultilabelAccuracy

from composer_imp.artifacts import RunFolder, atomic_torch_save, atomic_write_text, changed_keys, replicate_folder
from composer_imp.data_order import (SEED_STRIDE, ShiftCheckpointedOrder, branch_data_seed, forget_resumed_position,
                                     release_workers, reseed_data_order, restart_epoch_counters)
from composer_imp.imp import IMP
from composer_imp.masks import Mask, full_mask, load_mask, magnitude_prune, sparsity_report, unwrap_model
from composer_imp.plots import plot_accuracy_vs_compute

__all__ = ['find_ticket', 'build_level_trainer', 'fit_level', 'close_trainer', 'imp_trainer_args', 'on_rank0',
           'LevelResult', 'MakeTrainer', 'RESUMABLE_KEYS']

log = logging.getLogger(__name__)

MakeTrainer = Callable[[int, int, dict], Trainer]
# Keys a re-run may change without mixing runs: more levels extend a finished run, and a run folder may move.
RESUMABLE_KEYS = ('levels', 'progress_bar', 'save_folder', 'analysis', 'replicates', 'controls')
_ACCURACY = (MulticlassAccuracy, BinaryAccuracy, MultilabelAccuracy)


def on_rank0(compute: Callable[[], Any]) -> Any:
    """``compute()`` run on rank 0 only (it reads the run folder) and its result sent to every rank."""
    holder = [compute() if dist.get_global_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def imp_trainer_args(folder: RunFolder, level: Optional[int], checkpoint_interval: Optional[str], run_name: str,
                     from_rewind: bool = True, data_shift: int = 0) -> dict:
    """The Trainer arguments of one training: ``level=None`` is the pretraining (from initialization, checkpoints
    in ``rewind/checkpoints``); a level loads the rewind point when ``from_rewind`` (every level but level 0 at
    τ = 0) and checkpoints into its own folder. ``data_shift``: how many data seeds the level's order is from the
    pretraining's (a data order the checkpoint carries is moved by as many)."""
    args: dict[str, Any] = {}
    if level is not None and from_rewind:
        args.update(load_path=folder.rewind, load_weights_only=False)
        if data_shift:
            args.update(load_ignore_keys=ShiftCheckpointedOrder(data_shift))
    if checkpoint_interval:
        # A crash between writing a checkpoint and its `latest` link leaves a file autoresume does not know; the
        # resumed run re-creates it, so overwriting it is safe.
        args.update(save_folder=folder.checkpoints(level) if level is not None else folder.pretraining_checkpoints,
                    save_interval=checkpoint_interval, save_num_checkpoints_to_keep=1, autoresume=True,
                    save_overwrite=True,
                    run_name=f'{run_name}-level{level:02d}' if level is not None else f'{run_name}-pretraining')
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
    trainer = make_trainer(level, seed, dict(imp_args))
    if not isinstance(trainer, Trainer):
        raise TypeError(f'make_trainer(level, seed, imp_args) must return a composer.Trainer; it returned '
                        f'{type(trainer).__name__}. End it with `return Trainer(..., **imp_args)`.')
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


class _Run:
    """One IMP run in one folder (a replicate is one such run)."""

    def __init__(self, make_trainer: MakeTrainer, save_folder: str, levels: int, target_sparsity: Optional[float],
                 checkpoint_interval: Optional[str], seed: int, data_seed: int, overwrite: bool,
                 config: Optional[dict], metric: Optional[str], loss_metric: Optional[str]):
        self.make_trainer, self.folder, self.levels = make_trainer, RunFolder(save_folder), levels
        self.target, self.checkpoint_interval = target_sparsity, checkpoint_interval
        self.seed, self.data_seed, self.overwrite = seed, data_seed, overwrite
        self.user_config, self.metric, self.loss_metric = dict(config or {}), metric, loss_metric
        self.run_name = str(self.user_config.get('run_name') or os.path.basename(os.path.abspath(save_folder)) or 'imp')
        self.rows: list[dict] = []
        self.tau, self.data_order = 0, 'new'  # the recipe's, read from the pretraining's Trainer
        self.pretraining_resumed_from: Optional[int] = None  # the step Composer autoresumed the pretraining from

    def build(self, level: Optional[int]) -> tuple[Trainer, IMP]:
        """The Trainer of ``level`` (``None``: the pretraining, with the run's own data order)."""
        from_rewind = level is not None and (level > 0 or self.tau > 0)
        order = branch_data_seed(self.data_seed, level, self.data_order) if from_rewind else self.data_seed
        args = imp_trainer_args(self.folder, level, self.checkpoint_interval, self.run_name, from_rewind,
                                order - self.data_seed)
        return build_level_trainer(self.make_trainer, level or 0, self.seed, args, order)

    def config(self, imp: IMP) -> dict:
        return OmegaConf.to_container(OmegaConf.create({
            **self.user_config, 'save_folder': self.folder.root, 'imp': imp.settings(), 'levels': self.levels,
            'target_sparsity': self.target, 'checkpoint_interval': self.checkpoint_interval, 'seed': self.seed,
            'data_seed': self.data_seed,
        }), resolve=True)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> list[dict]:
        if self.overwrite and dist.get_global_rank() == 0:
            self.folder.clear()  # before any Trainer exists: none may autoresume from the run being replaced
        dist.barrier()
        trainer, imp = self.build(None)  # the pretraining's: checks the recipe and settings before anything is written
        try:
            imp.check(trainer.state)
            self.check_metrics(trainer.state)
            self.check_folder(imp)
            self.tau, self.data_order = imp.rewind_step(trainer.state), imp.data_order
            self.check_rewind(trainer.state, imp)
        except Exception:
            trainer.close()
            raise
        mask: Optional[Mask] = None
        for level in range(self.levels + 1):
            if on_rank0(lambda: self.folder.verify(level)):
                row, mask = on_rank0(lambda: (self.folder.read_row(level), load_mask(self.folder.mask(level))))
                if trainer is not None:  # the pretraining's, built only to check the recipe
                    trainer.close()
                    self.drop_pretraining_checkpoints()  # its autoresume created the folder
                log_rank0('level %02d already done (%.1f%% weights remaining), skipped', level,
                          100 * row['weights_remaining'])
            else:
                if level == 0:
                    self.pretrain(trainer, imp)
                    trainer = None
                if trainer is None:
                    trainer, imp = self.build(level)
                row, mask = self.train(level, trainer, imp, mask)
            trainer = None
            self.rows.append(row)
            if dist.get_global_rank() == 0:
                self.folder.write_summary(self.rows)
            if self.target is not None and 1.0 - row['weights_remaining'] >= self.target - 1e-12:
                log_rank0('target_sparsity=%s reached at level %02d', self.target, level)
                break
        self.report()
        return self.rows

    def check_rewind(self, state: State, imp: IMP) -> None:
        per_epoch = int(state.dataloader_len.value) if state.dataloader_len is not None else None
        total = _total_batches(state.max_duration, per_epoch)
        if total is not None and self.tau >= total:
            raise ValueError(f'IMP rewind={imp.rewind!r} ({self.tau} batches) is not before max_duration='
                             f'{state.max_duration} ({total} batches); choose an earlier rewind step.')

    def pretrain(self, trainer: Trainer, imp: IMP) -> None:
        """Phase 1 of Algorithm 1: train the dense network from initialization to τ and save the rewind point there
        (at τ = 0 level 0 saves it: level 0 is then the run from initialization). Closes ``trainer``."""
        if self.tau > 0 and not on_rank0(lambda: os.path.isfile(self.folder.rewind)):
            log_rank0('pretraining: %d steps from initialization to the rewind point', self.tau)
            imp.start_pretraining(self.folder.rewind)
            self.pretraining_resumed_from = int(trainer.state.timestamp.batch) or None
            trainer.fit()
        close_trainer(trainer)
        self.drop_pretraining_checkpoints()

    def drop_pretraining_checkpoints(self) -> None:
        """Once the rewind point exists, the pretraining's checkpoints are obsolete: it holds what they were for."""
        if dist.get_global_rank() == 0 and os.path.isdir(self.folder.pretraining_checkpoints):
            shutil.rmtree(self.folder.pretraining_checkpoints)
        dist.barrier()

    def train(self, level: int, trainer: Trainer, imp: IMP, previous: Optional[Mask]) -> tuple[dict, Mask]:
        start = time.perf_counter()
        mask, ratio, sweep = self.select(level, trainer, imp, previous)
        if dist.get_global_rank() == 0:
            os.makedirs(self.folder.root, exist_ok=True)
            atomic_write_text(OmegaConf.to_yaml(OmegaConf.create(self.config(imp))), self.folder.config)
            if not os.path.isfile(self.folder.selection(level)):
                os.makedirs(self.folder.level_dir(level), exist_ok=True)
                atomic_torch_save(mask, self.folder.mask(level))  # before training: a resumed level reuses it
                atomic_write_text(json.dumps({'ratio': ratio, 'sweep': sweep}, indent=2), self.folder.selection(level))
        dist.barrier()
        result = fit_level(trainer, imp, level, mask, self.folder.rewind if self.tau == 0 else None, self.tau,
                           self.metric, self.loss_metric)
        row = {**result.row, 'ratio': ratio, 'sweep': sweep}
        # Level 0's compute includes the pretraining (Algorithm 1, phase 1): every level after it starts at τ.
        row['pretraining_steps'] = self.tau if level == 0 else 0
        row['pretraining_resumed_from_step'] = self.pretraining_resumed_from if level == 0 else None
        row['steps'] += row['pretraining_steps']
        prev = self.rows[-1] if self.rows else None
        row['cumulative_steps'] = row['steps'] + (prev['cumulative_steps'] if prev else 0)
        # Compute in training-step equivalents: training steps plus the sweep's forward passes.
        row['compute'] = row['steps'] + (sweep['step_equivalents'] if sweep else 0.0)
        row['cumulative_compute'] = row['compute'] + (prev['cumulative_compute'] if prev else 0.0)
        if dist.get_global_rank() == 0:
            os.makedirs(self.folder.level_dir(level), exist_ok=True)
            atomic_torch_save(result.weights, self.folder.weights(level))
        row['wall_seconds'] = time.perf_counter() - start
        row['overhead_seconds'] = row['wall_seconds'] - row['fit_seconds']
        row['overhead_fraction'] = row['overhead_seconds'] / row['wall_seconds']
        if dist.get_global_rank() == 0:
            row['manifest'] = self.folder.manifest(level)
            atomic_write_text(json.dumps(row, indent=2), self.folder.level_json(level))  # last: marks the level done
            if os.path.isdir(self.folder.checkpoints(level)):
                shutil.rmtree(self.folder.checkpoints(level))  # the level's solution is in weights.pt now
        dist.barrier()
        self.log_level(row)
        return row, mask

    def select(self, level: int, trainer: Trainer, imp: IMP, previous: Optional[Mask]) -> tuple[Mask, float, Optional[dict]]:
        """The mask level ``level`` trains under, the ratio that made it and the sweep report (rank 0 decides)."""
        # Chosen before an interruption: reuse, never recompute (a sweep might not repeat bit for bit).
        saved = on_rank0(lambda: self.folder.read_selection(level))
        if saved is not None:
            return saved
        model = unwrap_model(trainer.state.model)
        if level == 0:
            return full_mask(model, imp.ignore), 0.0, None
        solution = on_rank0(lambda: self.folder.load_weights(level - 1))
        ratio, sweep = imp.choose_ratio(trainer.state, solution, previous, self.rows[0],
                                        lambda: on_rank0(lambda: self.folder.load_weights(0)), self.target,
                                        self.rows[-1])
        return on_rank0(lambda: (magnitude_prune(solution, previous, ratio, imp.scope), ratio, sweep))

    def check_metrics(self, state: State) -> None:
        """A named metric must be one the Trainer's evaluators compute (checked before level 0 trains)."""
        names = sorted({k for metrics in state.eval_metrics.values() for k in metrics})
        for what, name in (('metric', self.metric), ('loss_metric', self.loss_metric)):
            if name is not None and name not in names:
                raise ValueError(f'{what}={name!r} is not an eval metric of this Trainer; it has {names}.')

    def check_folder(self, imp: IMP) -> None:
        """Refuse to mix runs (nothing is written here)."""
        new = self.config(imp)
        if os.path.isfile(self.folder.config):
            old = OmegaConf.to_container(OmegaConf.load(self.folder.config), resolve=True)
            if 'levels' in (old.get('imp') or {}):
                raise ValueError(f'{self.folder.root} was made by composer-imp before IMP/AdaptiveIMP became Composer '
                                 'components (its config.yaml has an imp: block with levels), and cannot be resumed '
                                 'by this version. Its finished levels can still be analysed (python -m '
                                 'composer_imp.analyze). Use another save_folder, or --overwrite to start over.')
            old['imp'] = self.folder.recorded_imp()
            changed = [f'{key} ({a!r} -> {b!r})' for key, a, b in changed_keys(old, new)
                       if key.split('.')[0] not in RESUMABLE_KEYS and a != '<unset>']
            if changed:
                raise ValueError(f'{self.folder.root} holds an IMP run made with a different config; changed keys: '
                                 f'{", ".join(changed)}. Use another save_folder, restore those values to resume, '
                                 'or overwrite (run.py --overwrite) to delete that run and start over.')
        elif any(os.path.exists(p) for p in (self.folder.mask(0), self.folder.level_json(0), self.folder.rewind)):
            raise ValueError(f'{self.folder.root} holds level folders but no config.yaml; refusing to mix runs. '
                             'Use another save_folder or overwrite.')

    def log_level(self, row: dict) -> None:
        sweep, level = row['sweep'], row['level']
        dense = self.rows[0]['accuracy'] if self.rows else row['accuracy']
        accuracy = row['accuracy']
        acc = (f'accuracy {100 * accuracy:.2f}% (dense {100 * dense:.2f}%)' if accuracy is not None and dense is not None
               else 'no accuracy metric')
        if sweep:
            passed = [round(t['ratio'], 3) for t in sweep['table'] if t['within']]
            log_rank0('sweep before level %02d: threshold %.4f (%s %s loss %.4f + eps %.4f); ratios within: %s -> prune '
                      '%.3g; sweep cost %.1f step-equivalents', level, sweep['threshold'], sweep['reference'],
                      sweep['baseline'], sweep['dense_loss'], sweep['epsilon'], passed or 'none', sweep['pruned'],
                      sweep['step_equivalents'])
        log_rank0('level %02d/%02d: %.1f%% weights remaining (pruned %.0f%%), %s, %d steps from step %d, %.1f s',
                  level, self.levels, 100 * row['weights_remaining'], 100 * row['ratio'], acc, row['steps'],
                  row['start_step'], row['wall_seconds'])

    def report(self) -> None:
        if dist.get_global_rank() == 0:
            plot_accuracy_vs_compute({os.path.basename(self.folder.root): self.rows},
                                     os.path.join(self.folder.root, 'accuracy_vs_compute.png'))
        dense = self.rows[0].get('accuracy')
        if dense is None:
            return
        matching = [r for r in self.rows[1:] if r['accuracy'] is not None and r['accuracy'] >= dense - 0.01]
        if matching:
            best = min(matching, key=lambda r: r['weights_remaining'])
            log_rank0('sparsest level within 1 point of dense accuracy: level %02d, %.1f%% weights remaining, accuracy '
                      '%.2f%% (dense %.2f%%). Summary: %s', best['level'], 100 * best['weights_remaining'],
                      100 * best['accuracy'], 100 * dense, self.folder.summary)
        else:
            log_rank0('no pruned level came within 1 point of dense accuracy (%.2f%%). Summary: %s', 100 * dense,
                      self.folder.summary)


def log_rank0(message: str, *args: Any) -> None:
    """``logging.info`` on rank 0 only (every rank runs the same loop)."""
    if dist.get_global_rank() == 0:
        log.info(message, *args)


def _total_batches(max_duration: Optional[Time], per_epoch: Optional[int]) -> Optional[int]:
    if max_duration is None:
        return None
    if max_duration.unit.value == 'ba':
        return int(max_duration.value)
    if max_duration.unit.value == 'ep' and per_epoch:
        return int(max_duration.value) * per_epoch
    return None


def find_ticket(
    make_trainer: MakeTrainer,
    save_folder: str,
    levels: int = 5,
    *,
    target_sparsity: Optional[float] = None,
    checkpoint_interval: Optional[str] = None,
    seed: int = 17,
    replicates: int = 1,
    overwrite: bool = False,
    metric: Optional[str] = None,
    loss_metric: Optional[str] = None,
    config: Optional[dict] = None,
    device: Optional[str] = None,
) -> Any:
    """Run IMP levels ``0..levels`` with the Trainer ``make_trainer`` builds; call it in place of ``trainer.fit()``.

    Args:
        make_trainer: ``(level, seed, imp_args) -> Trainer``: your recipe's Trainer, with ``seed=seed``,
            ``**imp_args`` and one :class:`~composer_imp.IMP` / :class:`~composer_imp.AdaptiveIMP` in its algorithms.
            Called once per level (and per replicate); build loaders once outside it and reuse them.
        save_folder: where the run's artifacts go (:mod:`composer_imp.artifacts`).
        levels: pruned levels after the dense level 0 (the run trains ``levels + 1`` networks).
        target_sparsity: stop at the first level whose sparsity (fraction of prunable weights removed) reaches this
            (0.9 leaves 10%); ``levels`` stays the cap.
        checkpoint_interval: if set (``'1ep'``, ``'500ba'``), each level checkpoints into ``level_XX/checkpoints``
            at this interval and an interrupted level autoresumes from the latest.
        seed: the seed of level 0's initialization and the Trainer RNG; replicate ``i`` uses ``seed + i`` and draws
            its own data order.
        replicates: N independent runs (seeds ``seed .. seed + N - 1``) in ``save_folder/replicate_XX``.
        overwrite: delete a previous run in ``save_folder`` and start over.
        metric, loss_metric: eval metric names recorded as each level's accuracy and loss (default: the first
            accuracy metric and the first cross-entropy / loss metric the Trainer reports).
        config: more settings to record in ``config.yaml`` (the YAML runner records the whole recipe); a re-run
            with different settings is refused unless ``overwrite``.
        device: under Composer's launcher, the device whose backend the process group uses before the first
            Trainer exists (``'gpu'``/``'cpu'``; default: GPU when available).

    Returns:
        The summary rows of the run (``summary.json``); with ``replicates > 1``, one list per replicate.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ValueError(f'levels must be a whole number >= 0 (pruned levels after the dense one); got {levels!r}.')
    if target_sparsity is not None and not 0 < target_sparsity < 1:
        raise ValueError(f'target_sparsity must lie strictly between 0 and 1 (fraction of prunable weights removed; '
                         f'0.9 leaves 10%); got {target_sparsity!r}.')
    if checkpoint_interval is not None:
        try:
            Time.from_timestring(str(checkpoint_interval))
        except ValueError as e:
            raise ValueError(f'checkpoint_interval={checkpoint_interval!r} is not a Composer time such as "1ep" or '
                             '"500ba".') from e
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f'replicates={replicates!r} must be at least 1 (the number of seeds of the whole IMP run).')
    if dist.get_world_size() > 1:
        # Under `composer -n N`: the folder is guarded and decisions broadcast before the first Trainer exists.
        dist.initialize_dist(device or ('gpu' if torch.cuda.is_available() else 'cpu'))
    settings = dict(target_sparsity=target_sparsity, checkpoint_interval=checkpoint_interval, metric=metric,
                    loss_metric=loss_metric)
    if replicates == 1:
        return _Run(make_trainer, save_folder, levels, seed=seed, data_seed=0, overwrite=overwrite,
                    config=config, **settings).run()
    folder = RunFolder(save_folder)
    if os.path.isfile(folder.config):
        if not overwrite:
            raise ValueError(f'save_folder={save_folder} holds a single IMP run; replicates={replicates} live in their '
                             'own folders (replicate_XX inside save_folder). Choose another save_folder, or overwrite '
                             'to delete that run.')
        if dist.get_global_rank() == 0:
            folder.clear()
    runs = []
    for i in range(replicates):
        log_rank0('replicate %d/%d: seed %d, %s', i + 1, replicates, seed + i, replicate_folder(save_folder, i))
        runs.append(_Run(make_trainer, replicate_folder(save_folder, i), levels, seed=seed + i, data_seed=i,
                         overwrite=overwrite, config={**(config or {}), 'replicates': replicates}, **settings).run())
    return runs
