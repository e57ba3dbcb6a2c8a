"""The level orchestrator: IMP with weight rewinding around any Composer recipe.

One straight loop (Algorithm 1 of the paper, with weight rewinding):

1. level 0: train the dense network; :class:`~composer_imp.rewind.RewindCheckpoint` saves the full
   training state at step τ;
2. level L ≥ 1: prune ``imp.ratio`` of the remaining weights of the level L-1 solution (nested masks),
   build a fresh model, load the rewind checkpoint (weights, optimizer, schedulers, timestamp = τ),
   train to ``max_duration`` under :class:`~composer_imp.algorithms.KeepMask`.

Your recipe plugs in through two functions: ``model_fn()`` returns a fresh ``ComposerModel`` and
``trainer_kwargs_fn(model, level)`` returns the ``Trainer`` keyword arguments for it (optimizer on
*that* model's parameters, dataloaders built once and reused, schedulers, algorithms, new logger objects).

Example:
    >>> from composer_imp import IMPConfig, LevelOrchestrator
    >>> train_dl, eval_dl = ...                                   # doctest: +SKIP
    >>> def model_fn():
    ...     return ComposerClassifier(MyNet(), num_classes=10)     # doctest: +SKIP
    >>> def trainer_kwargs_fn(model, level):
    ...     opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ...     return dict(optimizers=opt, train_dataloader=train_dl, eval_dataloader=eval_dl,
    ...                 max_duration='10ep', seed=17)               # doctest: +SKIP
    >>> rows = LevelOrchestrator(model_fn, trainer_kwargs_fn, 'runs/mine',
    ...                          IMPConfig(levels=8, ratio=0.2, rewind='50ba')).run()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from composer import Trainer
from composer.core import Time, TimeUnit
from composer.models import ComposerModel
from composer.utils import dist, ensure_tuple
from omegaconf import OmegaConf
from torch import nn

from composer_imp.adaptive import FORWARD_FRACTION_OF_STEP, AdaptiveConfig, LossStatistics, sweep_ratio
from composer_imp.algorithms import KeepMask
from composer_imp.evaluate import evaluate_losses, fixed_subsample, local_device
from composer_imp.faults import LossGuard
from composer_imp.artifacts import RunFolder, atomic_torch_save, atomic_write_text
from composer_imp.masks import Mask, full_mask, load_mask, magnitude_prune, sparsity_report, unwrap_model
from composer_imp.rewind import RewindCheckpoint, parse_rewind, rewind_batches

__all__ = ['IMPConfig', 'LevelOrchestrator', 'find_ticket', 'apply_model_surgery', 'RESERVED_TRAINER_KWARGS']

log = logging.getLogger(__name__)

# The orchestrator owns these: each level loads the rewind point and writes into its own folder.
RESERVED_TRAINER_KWARGS = ('model', 'load_path', 'load_weights_only', 'save_folder', 'autoresume', 'run_name')
# Keys a re-run may change without mixing runs: more levels extend a finished run, and a run folder may move.
RESUMABLE_KEYS = ('imp.levels', 'progress_bar', 'save_folder', 'analysis', 'replicates')  # 'analysis': analysis.*


@dataclass
class IMPConfig:
    """How IMP prunes and rewinds (the ``imp:`` section of a YAML recipe).

    Attributes:
        levels: pruned levels after the dense level 0 (the run trains ``levels + 1`` networks).
        ratio: fraction of the *remaining* prunable weights removed at each level, in (0, 1).
        rewind: the rewind step τ, a Composer time in batches or epochs (``'2000ba'``, ``'1ep'``, ``0``).
        ignore: parameter or module names never pruned (validated against the model).
        scope: ``'global'`` magnitude pruning across layers (the paper) or ``'layerwise'``.
        checkpoint_interval: if set (e.g. ``'1ep'``), each level saves Composer checkpoints in
            ``level_XX/checkpoints`` at this interval and an interrupted level autoresumes from the latest.
        controls: control runs (``'random_mask'``, ``'reinit'``; see :mod:`composer_imp.controls`) trained for
            each level in ``control_levels`` after the run, reported beside the ticket.
        control_levels: pruned levels (≥ 1) that get the controls.
        target_sparsity: stop at the first level whose sparsity (fraction of prunable weights removed)
            reaches this, e.g. 0.9 leaves 10%; ``levels`` stays the cap.
        adaptive: :class:`~composer_imp.adaptive.AdaptiveConfig`, the per-level ratio sweep (AdaptiveIMP).
    """

    levels: int = 5
    ratio: float = 0.2
    rewind: Any = '0ba'
    ignore: list = field(default_factory=list)
    scope: str = 'global'
    checkpoint_interval: Optional[str] = None
    target_sparsity: Optional[float] = None
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    controls: list = field(default_factory=list)
    control_levels: list = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.adaptive, dict):
            self.adaptive = AdaptiveConfig(**self.adaptive)

    def validate(self) -> None:
        self.adaptive.validate()
        from composer_imp.controls import CONTROLS
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ValueError(f'imp.controls has unknown kinds {unknown}; valid: {list(CONTROLS)}.')
        bad = [l for l in self.control_levels if isinstance(l, bool) or not isinstance(l, int) or not 1 <= l <= self.levels]
        if bad:
            raise ValueError(f'imp.control_levels must be pruned levels between 1 and imp.levels={self.levels}; got {bad}.')
        if self.target_sparsity is not None and not 0 < self.target_sparsity < 1:
            raise ValueError(f'imp.target_sparsity must lie strictly between 0 and 1 (fraction of prunable weights '
                             f'removed; 0.9 leaves 10%); got {self.target_sparsity!r}.')
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 0:
            raise ValueError(f'imp.levels must be a whole number >= 0 (pruned levels after the dense one); got {self.levels!r}.')
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < float(self.ratio) < 1.0:
            raise ValueError(f'imp.ratio must lie strictly between 0 and 1 (fraction of the remaining weights pruned '
                             f'per level, e.g. 0.2); got {self.ratio!r}.')
        parse_rewind(self.rewind)
        if self.scope not in ('global', 'layerwise'):
            raise ValueError(f"imp.scope must be 'global' or 'layerwise'; got {self.scope!r}.")
        if self.checkpoint_interval is not None:
            try:
                Time.from_timestring(str(self.checkpoint_interval))
            except ValueError as e:
                raise ValueError(f'imp.checkpoint_interval={self.checkpoint_interval!r} is not a Composer time such as "1ep" or "500ba".') from e


def _to_batches(duration: Any, batches_per_epoch: Optional[int]) -> Optional[int]:
    """A duration (Time, time string, or int epochs as Composer reads it) in batches, if it can be known."""
    if isinstance(duration, Time):
        t = duration
    elif isinstance(duration, int):
        t = Time(duration, TimeUnit.EPOCH)
    else:
        t = Time.from_timestring(str(duration))
    if t.unit == TimeUnit.BATCH:
        return int(t.value)
    if t.unit == TimeUnit.EPOCH and batches_per_epoch is not None:
        return int(t.value) * batches_per_epoch
    return None


def apply_model_surgery(model: ComposerModel, algorithms: Any, optimizers: Any = None) -> None:
    """Apply the parameter-renaming surgery of Composer algorithms (BlurPool wraps strided convs, so
    ``x.weight`` becomes ``x.conv.weight``) to a fresh model *before* its mask is made, so masks, checkpoints
    and weights files all use the post-surgery names. Composer's own INIT surgery then finds nothing left to do.
    Surgery creates new parameters: ``optimizers`` already built on the model are updated to them.
    """
    from composer.algorithms import BlurPool
    from composer.algorithms.blurpool import apply_blurpool

    for algorithm in ensure_tuple(algorithms or []):
        if isinstance(algorithm, BlurPool):
            apply_blurpool(model, replace_convs=algorithm.replace_convs, replace_maxpools=algorithm.replace_maxpools,
                           blur_first=algorithm.blur_first, min_channels=algorithm.min_channels, optimizers=optimizers)


def _restart_dataset_epochs(kwargs: dict) -> None:
    """Loaders that count their own epochs are reused across levels (and replicates); set their counter back to 0.

    MosaicML Streaming: the position restored from the rewind checkpoint (an earlier epoch) would otherwise be
    discarded as stale. FFCV: Composer spins a loader once per past epoch when it resumes at τ, which brings the
    counter to τ's epoch, so a level reads the dense run's epoch orders from τ on.
    """
    for key in ('train_dataloader', 'eval_dataloader'):
        loader = kwargs.get(key)
        for counter in (getattr(loader, 'dataset', None), loader):
            if counter is not None and hasattr(counter, 'next_epoch'):
                counter.next_epoch = 0


def _batches_per_epoch(kwargs: dict) -> Optional[int]:
    try:
        return len(kwargs['train_dataloader'])
    except (KeyError, TypeError):
        return None


def _chance_accuracy(state: Any) -> Optional[float]:
    for metrics in state.eval_metrics.values():
        for metric in metrics.values():
            classes = getattr(metric, 'num_classes', None)
            if classes:
                return 1.0 / int(classes)
    return None


def _eval_numbers(values: dict[str, float]) -> tuple[Optional[float], Optional[float]]:
    acc = next((v for k, v in values.items() if 'accuracy' in k.lower()), None)
    loss = next((v for k, v in values.items() if 'crossentropy' in k.lower() or 'loss' in k.lower()), None)
    return acc, loss


class LevelOrchestrator:
    """Runs IMP-WR levels 0..``imp.levels`` around a user's Composer recipe.

    Args:
        model_fn: returns a fresh ``ComposerModel`` (called once per level; seed inside it if you want
            level 0 reproducible — later levels load their weights from the rewind point).
        trainer_kwargs_fn: ``(model, level) -> dict`` of ``Trainer`` arguments for that model; must not
            set any of :data:`RESERVED_TRAINER_KWARGS`.
        save_folder: where the run's artifacts go (see :mod:`composer_imp.artifacts`).
        imp: the :class:`IMPConfig`.
        config: the full resolved configuration to record in ``config.yaml`` (defaults to ``imp``);
            re-running on a folder recorded with a different one is refused unless ``overwrite``.
        overwrite: remove a previous run's artifacts in ``save_folder`` and start over.
        device: the device the Trainers use (``'cpu'``, ``'gpu'``, ``None`` = GPU when available); under
            Composer's launcher it picks the distributed backend (gloo or NCCL).
        sweep_data: training examples *without augmentation* for AdaptiveIMP's fixed sweep subsample: a
            map-style dataset, or an object with ``__len__`` and ``batches(indices, batch_size)`` (FFCV's
            :class:`~composer_imp.data.ffcv.BetonExamples`). Default: the training loader's dataset, seen
            through :func:`composer_imp.data.without_augmentation`.
    """

    def __init__(
        self,
        model_fn: Callable[[], ComposerModel],
        trainer_kwargs_fn: Callable[[ComposerModel, int], dict],
        save_folder: str,
        imp: Optional[IMPConfig] = None,
        config: Optional[dict] = None,
        overwrite: bool = False,
        device: Optional[str] = None,
        sweep_data: Any = None,
    ):
        self.device = device
        self.sweep_data = sweep_data
        self._dense_sweep_loss: Optional[float] = None  # AdaptiveIMP: the dense eval loss on the sweep subsample
        self.model_fn = model_fn
        self.trainer_kwargs_fn = trainer_kwargs_fn
        self.imp = imp or IMPConfig()
        self.imp.validate()
        self.folder = RunFolder(save_folder)
        self.config = config if config is not None else {'imp': dataclasses.asdict(self.imp)}
        self.overwrite = overwrite
        self.rows: list[dict] = []

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Train every level; return the summary rows (also in ``save_folder/summary.json``)."""
        if dist.get_world_size() > 1:
            # Under `composer -n N`: the masks are broadcast and the folder guarded before the first Trainer exists.
            dist.initialize_dist(self.device)
        self._check_folder()
        mask: Optional[Mask] = None
        for level in range(self.imp.levels + 1):
            if self._verified(level):
                row, mask = self._on_rank0(lambda: (self.folder.read_row(level), load_mask(self.folder.mask(level))))
                self._print(f'level {level:02d} already done ({100 * row["weights_remaining"]:.1f}% weights remaining), skipped')
            else:
                row, mask = self._train_level(level, mask)
            self.rows.append(row)
            if dist.get_global_rank() == 0:
                self.folder.write_summary(self.rows)
            target = self.imp.target_sparsity
            if target is not None and 1.0 - row['weights_remaining'] >= target - 1e-12:
                self._print(f'imp.target_sparsity={target} reached at level {level:02d}')
                break
        self._run_controls()
        if dist.get_global_rank() == 0:
            from composer_imp.plots import plot_accuracy_vs_compute  # lazy: keeps `python -m composer_imp.plots` clean
            plot_accuracy_vs_compute({os.path.basename(self.folder.root): self.rows},
                                     os.path.join(self.folder.root, 'accuracy_vs_compute.png'))
        self._print_verdict()
        return self.rows

    def _run_controls(self) -> None:
        from composer_imp.controls import run_control
        trained = {r['level']: r for r in self.rows}
        results = {}
        for level in self.imp.control_levels:
            if level not in trained:
                continue  # the run stopped before this level (imp.target_sparsity)
            for kind in self.imp.controls:
                row = run_control(self, level, kind)
                results.setdefault(str(level), {})[kind] = row['accuracy']
                self._print(f'control {kind} at level {level:02d}: accuracy {100 * row["accuracy"]:.2f}% '
                            f'(ticket {100 * trained[level]["accuracy"]:.2f}%)')
        if results and dist.get_global_rank() == 0:
            self.folder.write_summary(self.rows, {'controls': results})

    def _verified(self, level: int) -> bool:
        """Rank 0 checks the level's artifacts against their checksums (removing corrupted ones); all ranks agree."""
        return bool(self._on_rank0(lambda: self.folder.verify(level)))

    def _print_verdict(self) -> None:
        dense = self.rows[0].get('accuracy')
        if dense is None:
            return
        matching = [r for r in self.rows[1:] if r['accuracy'] is not None and r['accuracy'] >= dense - 0.01]
        if matching:
            best = min(matching, key=lambda r: r['weights_remaining'])
            self._print(f'sparsest level within 1 point of dense accuracy: level {best["level"]:02d}, '
                        f'{100 * best["weights_remaining"]:.1f}% weights remaining, accuracy {100 * best["accuracy"]:.2f}% '
                        f'(dense {100 * dense:.2f}%). Summary: {self.folder.summary}')
        else:
            self._print(f'no pruned level came within 1 point of dense accuracy ({100 * dense:.2f}%). Summary: {self.folder.summary}')

    # ---- steps -------------------------------------------------------------------------------
    def _resolved_config(self) -> dict:
        return OmegaConf.to_container(OmegaConf.create(self.config), resolve=True)

    def _check_folder(self) -> None:
        """Refuse to mix runs; clear the folder only when asked to. Writes nothing else."""
        resolved = self._resolved_config()
        if os.path.isfile(self.folder.config) and not self.overwrite:
            previous = OmegaConf.to_container(OmegaConf.load(self.folder.config), resolve=True)
            adaptive_unused = not any(OmegaConf.select(OmegaConf.create(c), 'imp.adaptive.enabled') for c in (previous, resolved))
            changed = [f'{key} ({old!r} -> {new!r})' for key, old, new in _changed_keys(previous, resolved)
                       if key not in RESUMABLE_KEYS and key.split('.')[0] not in RESUMABLE_KEYS
                       and old != '<unset>'  # a setting added to composer-imp after the run was made: its default
                       and not (adaptive_unused and key.startswith('imp.adaptive.'))]
            if changed:
                raise ValueError(
                    f'{self.folder.root} holds an IMP run made with a different config; changed keys: '
                    f'{", ".join(changed)}. Use another save_folder, restore those values to resume, '
                    'or pass overwrite=true (run.py --overwrite) to delete that run and start over.',
                )
        elif os.path.isdir(self.folder.level_dir(0)) and not self.overwrite:
            raise ValueError(f'{self.folder.root} holds level folders but no config.yaml; refusing to mix runs. '
                             'Use another save_folder or overwrite=true.')
        if self.overwrite:
            dist.barrier()
            if dist.get_global_rank() == 0:
                self.folder.clear()
            dist.barrier()

    def _write_config(self) -> None:
        """Record the config; called once the first level's Trainer arguments have been validated."""
        if dist.get_global_rank() == 0:
            os.makedirs(self.folder.root, exist_ok=True)
            atomic_write_text(OmegaConf.to_yaml(OmegaConf.create(self._resolved_config())), self.folder.config)

    def _next_mask(self, level: int, previous: Optional[Mask], model: ComposerModel, kwargs: dict) -> tuple[Mask, float, Optional[dict]]:
        """The mask level ``level`` trains under, the ratio that made it and the sweep report (rank 0 decides)."""
        # Chosen before an interruption: reuse, never recompute (a sweep might not repeat bit for bit). Rank 0
        # decides and sends it, so every rank takes the same path whatever its filesystem shows.
        saved = self._on_rank0(lambda: self._saved_selection(level, model))
        if saved is not None:
            return saved
        if level == 0:
            return full_mask(model, self.imp.ignore), 0.0, None
        ratio, sweep = float(self.imp.ratio), None
        if self.imp.adaptive.enabled:
            # Every rank sweeps on its share of the subsample (results all-reduced); rank 0's choice is broadcast.
            weights = self._on_rank0(lambda: self.folder.load_weights(level - 1))
            sweep = self._sweep(model, weights, previous, kwargs)
            ratio = max(sweep['chosen'] or 0.0, float(self.imp.ratio))
            sweep['pruned'] = ratio
        else:
            weights = self.folder.load_weights(level - 1) if dist.get_global_rank() == 0 else None
        return self._on_rank0(lambda: (magnitude_prune(weights, previous, ratio, self.imp.scope), ratio, sweep))

    def _saved_selection(self, level: int, model: ComposerModel) -> Optional[tuple[Mask, float, Optional[dict]]]:
        """The mask, ratio and sweep report chosen for ``level`` before an interruption, if both files exist."""
        if not (os.path.isfile(self.folder.mask(level)) and os.path.isfile(self.folder.selection(level))):
            return None
        with open(self.folder.selection(level)) as f:
            selection = json.load(f)
        return load_mask(self.folder.mask(level), model), selection['ratio'], selection['sweep']

    @staticmethod
    def _on_rank0(compute: Callable[[], Any]) -> Any:
        """``compute()`` run on rank 0 only (it reads the run folder) and its result sent to every rank."""
        holder = [compute() if dist.get_global_rank() == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def _sweep(self, model: ComposerModel, weights: dict, mask: Mask, kwargs: dict) -> dict:
        """AdaptiveIMP's ratio sweep at the level solution ``weights`` (see composer_imp.adaptive).

        Called on every rank: each evaluates its share of the fixed subsample on its own device and the sums are
        all-reduced, so the work is shared (by whole batches) and every rank sees the same numbers.
        """
        cfg = self.imp.adaptive
        tic = time.perf_counter()
        if self.rows[0].get('epsilon') is None:
            raise ValueError('imp.adaptive needs ε, the standard deviation of the dense run\'s per-batch training loss '
                             'over its last epoch, which level 0 did not record (fewer than 2 batches, or a run made '
                             'before adaptive existed); start a new run (another save_folder or --overwrite).')
        loader = kwargs['train_dataloader']
        batches = fixed_subsample(self._sweep_data(loader), cfg.subsample, cfg.batch_size, seed=0, rank_share=True)
        spread = dist.get_world_size() > 1
        stats = self.rows[0]
        forwards = 0
        # The LCS-set is that of the dense solution (the paper) or of the level solution being pruned.
        ref_level = 0 if cfg.reference == 'dense' else len(self.rows) - 1
        home = next(model.parameters()).device
        model.to(local_device(self.device))  # the Trainer places the model itself afterwards; put it back as found
        try:
            if cfg.baseline == 'eval' and ref_level == 0 and self._dense_sweep_loss is not None:
                dense = self._dense_sweep_loss  # the dense solution on the same fixed subsample: measured once per run
            elif cfg.baseline == 'eval':
                ref_weights = self._on_rank0(lambda: self.folder.load_weights(0)) if ref_level == 0 else weights
                dense = evaluate_losses(model, [ref_weights], batches, cfg.recalibrate_bn, all_reduce=spread)[0]
                forwards += cfg.subsample * (2 if cfg.recalibrate_bn else 1)
                if ref_level == 0:
                    self._dense_sweep_loss = dense
            else:
                dense = self.rows[ref_level]['train_loss_mean']
            threshold = dense + stats['epsilon']  # ε always from the dense run's last epoch
            landing = self._landing_ratio(mask)
            candidates = dataclasses.replace(cfg, ratios=[*cfg.ratios, landing]) if landing is not None else cfg
            result = sweep_ratio(model, weights, mask, batches, threshold, candidates, self.imp.scope, all_reduce=spread,
                                 floor=float(self.imp.ratio))
        finally:
            model.to(home)
        forwards += result.forward_samples
        global_batch = (loader.batch_size or 1) * dist.get_world_size()
        return {'epsilon': stats['epsilon'], 'baseline': cfg.baseline, 'reference': cfg.reference, 'dense_loss': dense, 'threshold': threshold,
                'landing_ratio': landing, 'table': result.table, 'chosen': result.ratio, 'forward_samples': forwards,
                'step_equivalents': forwards * FORWARD_FRACTION_OF_STEP / global_batch,
                'seconds': time.perf_counter() - tic}

    def _landing_ratio(self, mask: Mask) -> Optional[float]:
        """The ratio of the remaining weights that leaves exactly ``imp.target_sparsity`` (global scope), if it is a
        candidate worth trying."""
        target = self.imp.target_sparsity
        if target is None or not self.imp.adaptive.land_on_target or self.imp.scope != 'global':
            return None  # layerwise: per-layer rounding could stop a few weights short of the target
        report = sparsity_report(mask)
        allowed = math.floor((1.0 - target) * report['total'] + 1e-9)  # weights the target lets us keep
        ratio = (report['remaining'] - allowed) / max(report['remaining'], 1)
        # At or below the floor, the floor itself reaches the target; the grid's own ratios need no second try.
        if not float(self.imp.ratio) < ratio < 1 or ratio in self.imp.adaptive.ratios:
            return None
        return ratio

    def _sweep_data(self, loader: Any) -> Any:
        if self.sweep_data is not None:
            return self.sweep_data
        if not hasattr(loader, 'dataset'):
            raise ValueError(f'imp.adaptive needs training examples for its sweep, and the train_dataloader '
                             f'({type(loader).__name__}) has no map-style .dataset; pass sweep_data= to the orchestrator '
                             '(for FFCV: composer_imp.data.ffcv.BetonExamples(root, kind)).')
        from composer_imp.data import without_augmentation
        return without_augmentation(loader.dataset)

    def _trainer_kwargs(self, kwargs: dict, model: ComposerModel, level: int, mask: Mask) -> dict:
        kwargs = dict(kwargs)
        reserved = sorted(set(kwargs) & set(RESERVED_TRAINER_KWARGS))
        if reserved:
            raise ValueError(f'trainer_kwargs_fn returned {reserved}, which the IMP orchestrator sets itself '
                             '(each level loads the rewind point and saves into its own folder). Remove them.')
        algorithms = list(ensure_tuple(kwargs.pop('algorithms', None) or []))
        callbacks = list(ensure_tuple(kwargs.pop('callbacks', None) or []))
        if any(type(a).__name__ in ('EMA', 'SWA') for a in algorithms):
            raise ValueError('EMA/SWA cannot be combined with IMP yet: their averaged copy of the weights would keep '
                             'pruned weights non-zero (and the rewind checkpoint would carry the dense average). '
                             'Remove EMA/SWA from algorithms.')
        if level == 0:
            self._check_rewind_before_end(kwargs)
            self._check_adaptive(kwargs, model)
            callbacks.append(RewindCheckpoint(self.imp.rewind, self.folder.rewind))
        else:
            if not os.path.isfile(self.folder.rewind):
                raise FileNotFoundError(f'The rewind checkpoint {self.folder.rewind} is missing; level 0 must finish first.')
            algorithms.append(KeepMask(mask))
            kwargs.update(load_path=self.folder.rewind, load_weights_only=False)
            if self._rewinds_to_start(kwargs):
                # At step 0 the dense run's optimizer had no state; the checkpoint's is an artifact of saving.
                kwargs['load_ignore_keys'] = list(kwargs.get('load_ignore_keys') or []) + ['state/optimizers']
        if self.imp.checkpoint_interval:
            kwargs.update(save_folder=self.folder.checkpoints(level), save_interval=self.imp.checkpoint_interval,
                          save_num_checkpoints_to_keep=1, autoresume=True,
                          # A crash between writing a checkpoint and its `latest` link leaves a file autoresume does not
                          # know; the resumed run re-creates it, so overwriting it is safe.
                          save_overwrite=True)
        callbacks += [LossStatistics(), LossGuard(level)]  # every level records its train loss and ε
        base = str(self.config.get('run_name') or os.path.basename(self.folder.root) or 'imp')
        return dict(kwargs, model=model, algorithms=algorithms, callbacks=callbacks, run_name=f'{base}-level{level:02d}')

    def _check_adaptive(self, kwargs: dict, model: ComposerModel) -> None:
        if not self.imp.adaptive.enabled:
            return
        if self.imp.adaptive.recalibrate_bn and dist.get_world_size() > 1 and \
                any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
            # Its train-mode forward synchronizes across ranks, which hold different numbers of sweep batches.
            raise ValueError('imp.adaptive.recalibrate_bn cannot recompute SyncBatchNorm statistics under several ranks; '
                             'set imp.adaptive.recalibrate_bn=false or use plain BatchNorm (the sweep combines '
                             'BatchNorm statistics across ranks itself).')
        dataset = self._sweep_data(kwargs.get('train_dataloader'))
        try:
            size = len(dataset)
        except TypeError:
            raise ValueError('imp.adaptive needs training examples with a length to draw its fixed subsample from; '
                             f'{type(dataset).__name__} has none: pass sweep_data= to the orchestrator.') from None
        if self.imp.adaptive.subsample > size:
            raise ValueError(f'imp.adaptive.subsample={self.imp.adaptive.subsample} is larger than the training set '
                             f'({size} examples); choose at most {size}.')

    def _rewinds_to_start(self, kwargs: dict) -> bool:
        return rewind_batches(self.imp.rewind, _batches_per_epoch(kwargs) or 0) == 0

    def _check_rewind_before_end(self, kwargs: dict) -> None:
        per_epoch = _batches_per_epoch(kwargs)
        tau = rewind_batches(self.imp.rewind, per_epoch or 0)
        total = _to_batches(kwargs.get('max_duration'), per_epoch) if kwargs.get('max_duration') is not None else None
        if total is not None and tau >= total:
            raise ValueError(f'imp.rewind={self.imp.rewind!r} ({tau} batches) is not before max_duration='
                             f'{kwargs["max_duration"]!r} ({total} batches); choose an earlier rewind step.')

    def _train_level(self, level: int, previous: Optional[Mask]) -> tuple[dict, Mask]:
        start = time.perf_counter()
        model = self.model_fn()
        user_kwargs = self.trainer_kwargs_fn(model, level)
        apply_model_surgery(model, user_kwargs.get('algorithms'), user_kwargs.get('optimizers'))
        mask, ratio, sweep = self._next_mask(level, previous, model, user_kwargs)
        kwargs = self._trainer_kwargs(user_kwargs, model, level, mask)  # validates before anything is written
        self._write_config()
        if dist.get_global_rank() == 0 and not os.path.isfile(self.folder.selection(level)):
            os.makedirs(self.folder.level_dir(level), exist_ok=True)
            atomic_torch_save(mask, self.folder.mask(level))  # before training: a resumed level reuses it
            atomic_write_text(json.dumps({'ratio': ratio, 'sweep': sweep}, indent=2), self.folder.selection(level))
        dist.barrier()
        _restart_dataset_epochs(kwargs)
        with warnings.catch_warnings():
            # Expected: the dense rewind checkpoint was written before KeepMask existed.
            warnings.filterwarnings('ignore', message='KeepMask is not in the state_dict')
            trainer = Trainer(**kwargs)
        loaded_at = int(trainer.state.timestamp.batch)  # > τ when Composer autoresumed an interrupted level
        start_batch = 0 if level == 0 else rewind_batches(self.imp.rewind, _batches_per_epoch(kwargs) or 0)
        fit_start = time.perf_counter()
        trainer.fit()
        fit_end = time.perf_counter()

        state = trainer.state
        eval_values = {k: float(v) for k, v in state.eval_metric_values.items()}
        accuracy, loss = _eval_numbers(eval_values)
        weights = {k: v.detach().cpu().clone() for k, v in unwrap_model(state.model).state_dict().items()}
        report = sparsity_report(mask)
        steps = int(state.timestamp.batch) - start_batch
        prev_row = self.rows[-1] if self.rows else None
        row = {
            'level': level,
            'weights_remaining': report['weights_remaining'],
            'remaining': report['remaining'],
            'prunable': report['total'],
            'ratio': ratio,
            'accuracy': accuracy,
            'loss': loss,
            'eval': eval_values,
            'steps': steps,
            'start_step': start_batch,
            'resumed_from_step': loaded_at if loaded_at != start_batch else None,
            'cumulative_steps': steps + (prev_row['cumulative_steps'] if prev_row else 0),
            'sweep': sweep,
        }
        # Compute in training-step equivalents: training steps plus the sweep's forward passes.
        row['compute'] = steps + (sweep['step_equivalents'] if sweep else 0.0)
        row['cumulative_compute'] = row['compute'] + (prev_row['cumulative_compute'] if prev_row else 0.0)
        stats = next((cb for cb in kwargs['callbacks'] if isinstance(cb, LossStatistics)), None)
        if stats is not None:
            row.update(stats.result())
        trainer.logger.log_metrics({
            'imp/level': level, 'imp/weights_remaining': row['weights_remaining'], 'imp/ratio': ratio,
            **({'imp/accuracy': accuracy} if accuracy is not None else {}), **({'imp/loss': loss} if loss is not None else {}),
        })
        trainer.close()
        if dist.get_global_rank() == 0:
            os.makedirs(self.folder.level_dir(level), exist_ok=True)
            atomic_torch_save(weights, self.folder.weights(level))
        done = time.perf_counter()
        row.update(
            fit_seconds=fit_end - fit_start,
            overhead_seconds=(fit_start - start) + (done - fit_end),
            wall_seconds=done - start,
        )
        row['overhead_fraction'] = row['overhead_seconds'] / row['wall_seconds']
        chance = _chance_accuracy(state)
        row['collapsed'] = bool(accuracy is not None and chance is not None and accuracy <= 1.5 * chance)
        if row['collapsed']:
            self._print(f'WARNING: level {level:02d} accuracy {100 * accuracy:.2f}% is at chance level ({100 * chance:.1f}%)')
        if dist.get_global_rank() == 0:
            row['manifest'] = self.folder.manifest(level)
            atomic_write_text(json.dumps(row, indent=2), self.folder.level_json(level))  # last: marks the level done
            if os.path.isdir(self.folder.checkpoints(level)):
                shutil.rmtree(self.folder.checkpoints(level))  # the level's solution is in weights.pt now
        dist.barrier()
        dense = self.rows[0]['accuracy'] if self.rows else accuracy
        acc_txt = f'accuracy {100 * accuracy:.2f}% (dense {100 * dense:.2f}%)' if accuracy is not None and dense is not None else 'no accuracy metric'
        if sweep:
            passed = [round(t['ratio'], 3) for t in sweep['table'] if t['within']]
            self._print(f'sweep before level {level:02d}: threshold {sweep["threshold"]:.4f} ({sweep.get("reference", "dense")} {sweep["baseline"]} loss '
                        f'{sweep["dense_loss"]:.4f} + eps {sweep["epsilon"]:.4f}); ratios within: {passed or "none"}, '
                        f'first outside: {next((round(t["ratio"], 3) for t in sweep["table"] if not t["within"]), "none")} -> prune '
                        f'{sweep["pruned"]:.3g}; sweep cost {sweep["step_equivalents"]:.1f} step-equivalents')
        self._print(f'level {level:02d}/{self.imp.levels:02d}: {100 * row["weights_remaining"]:.1f}% weights remaining '
                    f'(pruned {100 * ratio:.0f}%), {acc_txt}, loss {loss if loss is None else round(loss, 4)}, '
                    f'{steps} steps from step {start_batch}, {row["wall_seconds"]:.1f} s (overhead {row["overhead_seconds"]:.2f} s)')
        return row, mask

    @staticmethod
    def _print(message: str) -> None:
        if dist.get_global_rank() == 0:
            print(f'[composer-imp] {message}', flush=True)


def _changed_keys(old: Any, new: Any, prefix: str = '') -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs (``'<unset>'`` where one side lacks it)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in _changed_keys(old.get(k, '<unset>'), new.get(k, '<unset>'), f'{prefix}{k}.')]
    return [] if old == new else [(prefix[:-1], old, new)]


def find_ticket(
    model_fn: Callable[[], ComposerModel],
    trainer_kwargs_fn: Callable[[ComposerModel, int], dict],
    save_folder: str,
    imp: Optional[IMPConfig] = None,
    **kwargs: Any,
) -> list[dict]:
    """Functional form of :class:`LevelOrchestrator`: run IMP-WR and return the summary rows."""
    return LevelOrchestrator(model_fn, trainer_kwargs_fn, save_folder, imp, **kwargs).run()
