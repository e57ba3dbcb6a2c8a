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
   (:mod:`composer_imp.run_folder`); a re-run resumes.

Every level starts like OpenLTH's: from ``w_τ`` at step τ of the learning-rate schedule, with a fresh optimizer
(``IMP(rewind_optimizer=True)`` restores the momentum at τ) and its own data order (``IMP(data_order='replay')``
replays the pretraining's).

What ``imp_args`` holds: ``run_name``; for a level from the rewind point ``load_path`` (the rewind point) and
``load_weights_only=False``; with ``checkpoint_interval`` also ``save_folder`` (the level's own), ``save_interval``,
``autoresume``. A Trainer that was not given them, or that would write checkpoints elsewhere, is refused before
anything trains (:mod:`composer_imp.lifecycle`).

The run folder is locked for the run's life (:mod:`composer_imp.folder_lock`); ``config.yaml`` is written once the
pretraining's Trainer has passed every check and before anything trains, so every interruption resumes with the
same command; ``overwrite`` moves the previous run aside and deletes it only once the new run has started
(:meth:`~composer_imp.run_folder.RunFolder.set_aside`).

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
import os
import shutil
import time
from typing import Any, Callable, Optional

import torch
from composer import Trainer
from composer.core import State, Time
from composer.utils import dist
from omegaconf import OmegaConf

from composer_imp.criteria import DEFAULT_TOLERANCE, is_matching
from composer_imp.data_order import branch_data_seed
from composer_imp.imp import IMP
from composer_imp.lifecycle import MakeTrainer, build_level_trainer, close_trainer, fit_level, imp_trainer_args
from composer_imp.masks import Mask, full_mask, load_mask, magnitude_prune, unwrap_model
from composer_imp.plots import plot_accuracy_vs_compute
from composer_imp.rank_zero import held_on_rank0, log_rank0, on_rank0
from composer_imp.rewind import check_rewind
from composer_imp.run_folder import IMP_NAMES, RunFolder, atomic_torch_save, atomic_write_text, changed_keys

__all__ = ['find_ticket', 'RESUMABLE_KEYS']

# Keys a re-run may change without mixing runs: more levels extend a finished run, and a run folder may move.
RESUMABLE_KEYS = ('levels', 'progress_bar', 'save_folder', 'analysis', 'replicates', 'controls')


class _Run:
    """One IMP run in one folder (a replicate is one such run)."""

    def __init__(self, make_trainer: MakeTrainer, folder: RunFolder, levels: int, target_sparsity: Optional[float],
                 checkpoint_interval: Optional[str], seed: int, data_seed: int, config: Optional[dict],
                 metric: Optional[str], loss_metric: Optional[str], on_started: Callable[[], None]):
        self.make_trainer, self.folder, self.levels = make_trainer, folder, levels
        self.target, self.checkpoint_interval = target_sparsity, checkpoint_interval
        self.seed, self.data_seed, self.on_started = seed, data_seed, on_started
        self.user_config, self.metric, self.loss_metric = dict(config or {}), metric, loss_metric
        self.run_name = str(self.user_config.get('run_name') or os.path.basename(folder.root) or 'imp')
        self.rows: list[dict] = []
        self.tau, self.data_order = 0, 'new'  # the recipe's, read from the pretraining's Trainer
        self.settings: dict = {}  # the IMP component's, from the pretraining's Trainer: every level must have them
        self.pretraining_resumed_from: Optional[int] = None  # the step Composer autoresumed the pretraining from

    def build(self, level: Optional[int]) -> tuple[Trainer, IMP]:
        """The Trainer of ``level`` (``None``: the pretraining, with the run's own data order)."""
        from_rewind = level is not None and (level > 0 or self.tau > 0)
        order = branch_data_seed(self.data_seed, level, self.data_order) if from_rewind else self.data_seed
        args = imp_trainer_args(self.folder, level, self.checkpoint_interval, self.run_name, from_rewind,
                                order - self.data_seed)
        trainer, imp = build_level_trainer(self.make_trainer, level or 0, self.seed, args, order)
        changed = [f'{k} ({a!r} -> {b!r})' for k, a, b in changed_keys(self.settings, imp.settings())]
        if self.settings and changed:
            trainer.close()
            raise ValueError(f'Level {level}: make_trainer built {type(imp).__name__} with other settings than the '
                             f'run\'s: {", ".join(changed)}. Every level must use the same IMP settings (the level '
                             'number is for logging, not for changing the recipe); a run with other settings needs its '
                             'own save_folder.')
        return trainer, imp

    def config(self, imp: IMP) -> dict:
        """``config.yaml``: the recipe as given (a YAML recipe's keys), with the IMP component's full settings under
        ``algorithms`` and the level loop's settings beside them."""
        settings = imp.settings()
        name = settings.pop('name')
        given = dict(self.user_config.get('algorithms') or {})
        algorithms = {k: (settings if k in IMP_NAMES else v) for k, v in given.items() if k not in IMP_NAMES or k == name}
        algorithms.setdefault(name, settings)
        return OmegaConf.to_container(OmegaConf.create({
            **self.user_config, 'save_folder': self.folder.root, 'algorithms': algorithms, 'levels': self.levels,
            'target_sparsity': self.target, 'checkpoint_interval': self.checkpoint_interval, 'seed': self.seed,
            'data_seed': self.data_seed,
        }), resolve=True)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """The levels, with this run folder locked (a replicate's own lock too: it is a complete run folder)."""
        with held_on_rank0(self.folder.lock('training')):
            return self._run()

    def _run(self) -> list[dict]:
        trainer, imp = self.build(None)  # the pretraining's: checks the recipe and settings before anything is written
        try:
            imp.check(trainer.state)
            self.check_metrics(trainer.state)
            on_rank0(lambda: self.check_folder(imp))
            self.tau, self.data_order = imp.rewind_step(trainer.state), imp.data_order
            check_rewind(imp.rewind, trainer.state, type(imp).__name__)
            self.settings = imp.settings()
            on_rank0(lambda: self.start(imp))
        except Exception:
            trainer.close()
            raise
        mask: Optional[Mask] = None
        stopped_at_target = False
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
            on_rank0(lambda: self.folder.write_summary(self.rows))
            if self.target is not None and 1.0 - row['weights_remaining'] >= self.target - 1e-12:
                log_rank0('target_sparsity=%s reached at level %02d', self.target, level)
                stopped_at_target = True
                break
        if not stopped_at_target:
            self.keep_later_levels()
        self.report()
        return self.rows

    def start(self, imp: IMP) -> None:
        """The run has passed its checks (rank 0): mark the folder, write ``config.yaml`` before anything trains (every
        interruption from here on resumes with the same command), and let an overwrite delete the previous run."""
        self.folder.mark()
        self.folder.write_config(self.config(imp))
        self.on_started()

    def keep_later_levels(self) -> None:
        """Levels beyond ``levels`` that an earlier run with more levels finished stay in ``summary.json``."""
        later = on_rank0(lambda: [self.folder.read_row(level) for level in self.folder.levels_done()
                                  if level > self.levels and self.folder.verify(level)])
        if later:
            self.rows.extend(later)
            log_rank0('levels %02d-%02d were trained by an earlier run of this folder with more levels; kept in %s',
                      later[0]['level'], later[-1]['level'], self.folder.summary)
            on_rank0(lambda: self.folder.write_summary(self.rows))

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
        on_rank0(lambda: os.path.isdir(self.folder.pretraining_checkpoints) and
                 shutil.rmtree(self.folder.pretraining_checkpoints))

    def train(self, level: int, trainer: Trainer, imp: IMP, previous: Optional[Mask]) -> tuple[dict, Mask]:
        start = time.perf_counter()
        mask, ratio, sweep = self.select(level, trainer, imp, previous)

        def write_selection() -> None:  # before training: a resumed level reuses it
            if not os.path.isfile(self.folder.selection(level)):
                os.makedirs(self.folder.level_dir(level), exist_ok=True)
                atomic_torch_save(mask, self.folder.mask(level))
                atomic_write_text(json.dumps({'ratio': ratio, 'sweep': sweep}, indent=2), self.folder.selection(level))
        on_rank0(write_selection)  # rank 0 writes; a failure (a full disk) is raised on every rank
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
        on_rank0(lambda: atomic_torch_save(result.weights, self.folder.weights(level)))
        row['wall_seconds'] = time.perf_counter() - start
        row['overhead_seconds'] = row['wall_seconds'] - row['fit_seconds']
        row['overhead_fraction'] = row['overhead_seconds'] / row['wall_seconds']
        def write_row() -> dict:
            self.folder.write_row(row)  # last: marks the level done
            if os.path.isdir(self.folder.checkpoints(level)):
                shutil.rmtree(self.folder.checkpoints(level))  # the level's solution is in weights.pt now
            return self.folder.read_row(level)  # with its manifest, as a resumed run reads it
        row = on_rank0(write_row)
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
        """Refuse to mix runs (rank 0; nothing is written here)."""
        new = self.config(imp)
        if os.path.isfile(self.folder.config):
            old = self.folder.read_config()
            if 'levels' in (old.get('imp') or {}):
                raise ValueError(f'{self.folder.root} was made by composer-imp before IMP/AdaptiveIMP became Composer '
                                 'components (its config.yaml has an imp: block with levels), and cannot be resumed '
                                 'by this version. Its finished levels can still be analysed (python -m '
                                 'composer_imp.analyze). Use another save_folder, or --overwrite to start over.')
            recorded = self.folder.recorded_imp()  # runs made before 0.3 keep their settings in an imp: block
            name = recorded.pop('name', None)
            if name is not None and name != type(imp).__name__:
                raise ValueError(f'{self.folder.root} holds a run that was made with {name}, and this run uses '
                                 f'{type(imp).__name__}. Use another save_folder, or overwrite (run.py --overwrite) to '
                                 'replace that run.')
            old.pop('imp', None)
            old['algorithms'] = {**{k: v for k, v in (old.get('algorithms') or {}).items() if k not in IMP_NAMES},
                                 **({name: recorded} if name else {})}
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
            plot_accuracy_vs_compute({os.path.basename(self.folder.root): self.rows}, self.folder.compute_figure)
        dense = self.rows[0].get('accuracy')
        if dense is None:
            return
        # Matching as the analysis judges it (composer_imp.criteria), in the Trainer's accuracy metric.
        matching = [r for r in self.rows[1:] if r['accuracy'] is not None and
                    is_matching(1 - r['accuracy'], 1 - dense, DEFAULT_TOLERANCE)]
        if matching:
            best = min(matching, key=lambda r: r['weights_remaining'])
            log_rank0('sparsest level within %g point of dense accuracy: level %02d, %.1f%% weights remaining, accuracy '
                      '%.2f%% (dense %.2f%%). Summary: %s', 100 * DEFAULT_TOLERANCE, best['level'],
                      100 * best['weights_remaining'], 100 * best['accuracy'], 100 * dense, self.folder.summary)
        else:
            log_rank0('no pruned level came within %g point of dense accuracy (%.2f%%). Summary: %s',
                      100 * DEFAULT_TOLERANCE, 100 * dense, self.folder.summary)


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
        save_folder: where the run's artifacts go (:mod:`composer_imp.run_folder`).
        levels: pruned levels after the dense level 0 (the run trains ``levels + 1`` networks).
        target_sparsity: stop at the first level whose sparsity (fraction of prunable weights removed) reaches this
            (0.9 leaves 10%); ``levels`` stays the cap.
        checkpoint_interval: if set (``'1ep'``, ``'500ba'``), each level checkpoints into ``level_XX/checkpoints``
            at this interval and an interrupted level autoresumes from the latest.
        seed: the seed of level 0's initialization and the Trainer RNG; replicate ``i`` uses ``seed + i`` and draws
            its own data order.
        replicates: N independent runs (seeds ``seed .. seed + N - 1``) in ``save_folder/replicate_XX``.
        overwrite: replace a previous run in ``save_folder``: it is moved aside, and deleted only once the new run
            has passed its checks and started (restored if it fails before). A folder composer-imp did not make is
            refused, and files of yours in it that the run layout does not name are never touched.
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
        except ValueError:
            raise ValueError(f'checkpoint_interval={checkpoint_interval!r} is not a Composer time such as "1ep" or '
                             '"500ba".') from None
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f'replicates={replicates!r} must be at least 1 (the number of seeds of the whole IMP run).')
    if dist.get_world_size() > 1:
        # Under `composer -n N`: the folder is guarded and decisions broadcast before the first Trainer exists.
        dist.initialize_dist(device or ('gpu' if torch.cuda.is_available() else 'cpu'))
    folder = RunFolder(save_folder)
    lock = folder.lock('training')
    on_rank0(lambda: _open(folder, lock, overwrite, replicates))
    settings = dict(target_sparsity=target_sparsity, checkpoint_interval=checkpoint_interval, metric=metric,
                    loss_metric=loss_metric, on_started=lambda: _started(folder))
    try:
        if replicates == 1:
            return _Run(make_trainer, folder, levels, seed=seed, data_seed=0, config=config, **settings).run()
        runs = []
        for i in range(replicates):
            log_rank0('replicate %d/%d: seed %d, %s', i + 1, replicates, seed + i, folder.replicate(i).root)
            runs.append(_Run(make_trainer, folder.replicate(i), levels, seed=seed + i, data_seed=i,
                             config={**(config or {}), 'replicates': replicates}, **settings).run())
        return runs
    finally:
        if dist.get_global_rank() == 0:
            started = os.path.isfile(folder.config) or bool(folder.replicates())
            try:
                folder.settle_replaced()  # an overwrite whose new run never started: the old run comes back
            finally:
                lock.release(discard=not started)  # a run refused before it started leaves nothing behind


def _started(folder: RunFolder) -> None:
    """The (first) run in ``folder`` has passed its checks and written its config: the folder is the project's, and
    a previous run set aside by ``overwrite`` can go."""
    folder.mark()
    folder.mark_started()


def _open(folder: RunFolder, lock: Any, overwrite: bool, replicates: int) -> None:
    """Rank 0, before any Trainer exists: take the folder's lock, clean up after a killed process, and for
    ``overwrite`` move the previous run aside (it is deleted once the new run has started, restored if it fails)."""
    lock.acquire()
    try:
        # An analysis writing into the folder would write into the wrong run after an overwrite. Only a folder that has
        # an analysis lock file can have an analysis running: none is created here.
        analysis = folder.lock('analysis')
        if os.path.exists(analysis.path):
            analysis.acquire()
        try:
            folder.recover()
            if replicates > 1 and os.path.isfile(folder.config) and not overwrite:
                raise ValueError(f'save_folder={folder.root} holds a single IMP run; replicates={replicates} live in '
                                 'their own folders (replicate_XX inside save_folder). Choose another save_folder, or '
                                 'overwrite to replace that run.')
            if replicates == 1 and folder.replicates() and not overwrite:
                raise ValueError(f'save_folder={folder.root} holds replicate runs (replicate_XX); a single run would '
                                 'be written beside them. Set replicates to their number to resume them, choose another '
                                 'save_folder, or overwrite to replace them.')
            if overwrite:
                folder.set_aside()  # before any Trainer exists: none may autoresume from the run being replaced
        finally:
            analysis.release()
    except BaseException:
        lock.release(discard=True)  # refused before anything was written: not even the lock file stays
        raise
