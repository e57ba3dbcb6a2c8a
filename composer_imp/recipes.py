"""From a validated config to the user-side recipe: ``make_trainer(level, seed, imp_args)`` for the level loop.

Sections name what they build, plus its keyword arguments:

* ``model``: a model of :mod:`composer_imp.models` (``name: small_cnn``, ``width: 16``, ...);
* ``data``: a dataset of :mod:`composer_imp.data` plus ``batch_size`` (global), ``eval_batch_size``, ``num_workers``;
* ``optimizer``: a class of ``torch.optim`` or ``composer.optim`` (``name: SGD`` or ``DecoupledSGDW``);
* ``scheduler``: a ``composer.optim`` scheduler class (``name: MultiStepScheduler``, ``milestones: [...]``);
* ``algorithms``: ``{ClassName: {kwargs}}`` from ``composer.algorithms``, then ``composer_imp`` (``IMP``,
  ``AdaptiveIMP``); ``callbacks`` / ``loggers`` from ``composer.callbacks`` / ``composer.loggers`` (new objects
  are built for every level).

Everything is built once in :func:`build_recipe` before any training, so a bad name or keyword stops the run
with a message naming the key. :func:`run_config` then runs the levels (:func:`composer_imp.find_ticket`), the
controls and the analysis.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from types import ModuleType
from typing import Any, Optional, Sequence

import composer.algorithms
import composer.callbacks
import composer.loggers
import composer.optim
import torch
from composer import Trainer
from composer.core import Time, TimeUnit
from composer.utils import dist
from omegaconf import DictConfig, OmegaConf

import composer_imp
from composer_imp.analysis import LandscapeSettings, analyze_run
from composer_imp.run_folder import RunFolder
from composer_imp.config import ConfigError
from composer_imp.controls import run_controls
from composer_imp.data import make_loaders, per_rank_batch_sizes
from composer_imp.level_loop import find_ticket
from composer_imp.masks import unwrap_model
from composer_imp.models import build_model
from composer_imp.replicates import analyze_replicates

__all__ = ['build_recipe', 'build_object', 'run_config', 'Recipe']

log = logging.getLogger(__name__)


def build_object(namespaces: Sequence[ModuleType], name: str, kwargs: dict, key: str, *args: Any) -> Any:
    """Instantiate class ``name`` from the first namespace that has it, checking ``kwargs`` against its signature."""
    for ns in namespaces:
        cls = getattr(ns, name, None)
        if inspect.isclass(cls):
            break
    else:
        known = sorted({n for ns in namespaces for n in dir(ns) if inspect.isclass(getattr(ns, n)) and not n.startswith('_')})
        close = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"{key}: {name!r} is not a class in {', '.join(ns.__name__ for ns in namespaces)}"
                          + (f" (did you mean {close[0]!r}?)" if close else '') + '.')
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            valid = [p for p in params if p not in ('self', 'params')]
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            raise ConfigError(f"{key}.{unknown[0]} is not an argument of {name}"
                              + (f" (did you mean '{key}.{close[0]}'?)" if close else '') + f"; valid: {', '.join(valid)}.")
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f'{key}: could not build {name}({kwargs}): {e}') from None


def _split(section: Any) -> tuple[str, dict]:
    spec = dict(OmegaConf.to_container(section, resolve=True)) if isinstance(section, DictConfig) else dict(section)
    return spec.pop('name'), spec


def _named_objects(section: Any, namespaces: Sequence[ModuleType], key: str) -> list:
    spec = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section or {})
    return [build_object(namespaces, name, dict(kwargs or {}), f'{key}.{name}') for name, kwargs in spec.items()]


class Recipe:
    """A config turned into ``make_trainer(level, seed, imp_args)``, the function :func:`find_ticket` calls.

    Dataloaders are built once here and reused by every level; model, optimizer, scheduler, algorithms (IMP among
    them), callbacks and loggers are built fresh for each level.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.device = None if cfg.device == 'auto' else cfg.device
        if dist.get_world_size() > 1:
            dist.initialize_dist(self.device)  # samplers and validation need the process group
        data_name, data_kwargs = _split(cfg.data)
        loader_keys = ('batch_size', 'eval_batch_size', 'num_workers', 'drop_last')
        loader_kwargs = {k: data_kwargs.pop(k) for k in loader_keys if k in data_kwargs}
        if 'batch_size' not in loader_kwargs:
            raise ConfigError('data.batch_size is required (the global training batch size).')
        try:
            if data_name == 'streaming':  # StreamingDataset wants the per-device batch sizes at construction
                data_kwargs['device_batch_size'], data_kwargs['device_eval_batch_size'] = per_rank_batch_sizes(
                    loader_kwargs['batch_size'], loader_kwargs.get('eval_batch_size'))
            self.sweep_data, self.train_dataloader, self.eval_dataloader = make_loaders(
                data_name, data_kwargs, loader_kwargs, seed=cfg.seed)
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e)) from None
        self.model_name, self.model_kwargs = _split(cfg.model)
        self._validate()

    def make_trainer(self, level: int, seed: int, imp_args: dict) -> Trainer:
        """The recipe's Trainer for ``level`` (the level loop seeds every RNG with ``seed`` before calling this)."""
        try:
            model = build_model(self.model_name, **self.model_kwargs)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return Trainer(model=model, train_dataloader=self.train_dataloader, eval_dataloader=self.eval_dataloader,
                       seed=seed, **self._parts(model), **imp_args)

    def _parts(self, model: torch.nn.Module) -> dict:
        """Every other Trainer argument the config describes, built fresh."""
        cfg = self.cfg
        opt_name, opt_kwargs = _split(cfg.optimizer)
        optimizer = build_object([torch.optim, composer.optim], opt_name, opt_kwargs, 'optimizer', model.parameters())
        schedulers = []
        if cfg.scheduler is not None:
            sched_name, sched_kwargs = _split(cfg.scheduler)
            schedulers.append(build_object([composer.optim], sched_name, sched_kwargs, 'scheduler'))
        algorithms = _named_objects(cfg.algorithms, [composer.algorithms, composer_imp], 'algorithms')
        for algorithm in algorithms:
            if hasattr(algorithm, 'sweep_data') and algorithm.sweep_data is None:
                algorithm.sweep_data = self.sweep_data  # un-augmented training examples (FFCV: read by index)
        parts = dict(optimizers=optimizer, schedulers=schedulers, max_duration=cfg.max_duration,
                     eval_interval=cfg.eval_interval, progress_bar=cfg.progress_bar, algorithms=algorithms,
                     callbacks=_named_objects(cfg.callbacks, [composer.callbacks], 'callbacks'),
                     loggers=_named_objects(cfg.loggers, [composer.loggers], 'loggers'), device=self.device)
        if cfg.precision is not None:
            parts['precision'] = cfg.precision
        if cfg.device_train_microbatch_size is not None:
            parts['device_train_microbatch_size'] = cfg.device_train_microbatch_size
        return parts

    def analysis_model(self) -> torch.nn.Module:
        """The run's model as its Trainers held it (after Composer's surgery, on the run's device), for the analysis."""
        trainer = self.make_trainer(0, self.cfg.seed, {})
        model = unwrap_model(trainer.state.model)
        trainer.close()
        return model

    # Validation before any training ----------------------------------------------------------
    def _validate(self) -> None:
        cfg = self.cfg
        if cfg.device not in ('auto', 'cpu', 'gpu', 'mps'):
            raise ConfigError(f"device must be one of auto, cpu, gpu, mps; got {cfg.device!r}.")
        if cfg.device == 'gpu' and not torch.cuda.is_available():
            raise ConfigError('device=gpu but no CUDA GPU is visible; use device=cpu or device=auto.')
        for key in ('max_duration', 'eval_interval', *(['checkpoint_interval'] if cfg.checkpoint_interval else [])):
            try:
                Time.from_timestring(str(cfg[key]))
            except ValueError:
                raise ConfigError(f'{key}={cfg[key]!r} is not a Composer time string such as "10ep" or "2000ba".') from None
        total = Time.from_timestring(str(cfg.max_duration))
        if total.unit not in (TimeUnit.EPOCH, TimeUnit.BATCH):
            raise ConfigError(f'max_duration must be in epochs ("ep") or batches ("ba"); got {cfg.max_duration!r}.')
        try:
            model = build_model(self.model_name, **self.model_kwargs)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        # Builds optimizer, scheduler, algorithms (IMP's own arguments checked), callbacks and loggers once; the rest
        # of IMP's checks (τ before max_duration, metrics, the folder) run in find_ticket before anything trains.
        self._parts(model)


def build_recipe(cfg: DictConfig) -> Recipe:
    """Build (and so validate) everything a config describes, before any training."""
    return Recipe(cfg)


def run_config(cfg: DictConfig, overwrite: Optional[bool] = None) -> list:
    """Run IMP as a config describes: levels, controls, analysis. Returns the summary rows (one list per replicate
    if ``replicates > 1``)."""
    recipe = build_recipe(cfg)
    overwrite = bool(cfg.overwrite if overwrite is None else overwrite)
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != 'overwrite'}
    runs = find_ticket(recipe.make_trainer, cfg.save_folder, cfg.levels, target_sparsity=cfg.target_sparsity,
                       checkpoint_interval=cfg.checkpoint_interval, seed=cfg.seed, replicates=cfg.replicates,
                       overwrite=overwrite, metric=cfg.metric, config=config, device=recipe.device)
    folders = [f.root for f in RunFolder(cfg.save_folder).replicates()] if cfg.replicates > 1 else [cfg.save_folder]
    if cfg.controls.kinds:
        for folder in folders:
            run_controls(recipe.make_trainer, folder, list(cfg.controls.levels), list(cfg.controls.kinds))
    a = cfg.analysis
    if a.enabled:  # on every rank: the evaluations are spread over them
        analyze = analyze_run if cfg.replicates == 1 else analyze_replicates
        settings = LandscapeSettings(list(a.betas), a.tolerance, a.recalibrate_bn, a.pairwise, a.planes)
        result = analyze(cfg.save_folder, recipe.analysis_model(), recipe.eval_dataloader, recipe.sweep_data, settings)
        if dist.get_global_rank() == 0:
            epsilon = f'ε = {100 * result["epsilon"]:.2f} points; ' if 'epsilon' in result else ''
            log.info('analysis written to %s/analysis; %sconnected iff matching: %s', cfg.save_folder, epsilon,
                     result['connected_iff_matching'])
    return runs
