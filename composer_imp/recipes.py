"""From a validated config to Composer Trainer parts, then to an IMP run.

Sections name what they build, plus its keyword arguments:

* ``model``: a model of :mod:`composer_imp.models` (``name: small_cnn``, ``width: 16``, ...);
* ``data``: a dataset of :mod:`composer_imp.data` plus ``batch_size`` (global), ``eval_batch_size``, ``num_workers``;
* ``optimizer``: a class of ``torch.optim`` or ``composer.optim`` (``name: SGD`` or ``DecoupledSGDW``);
* ``scheduler``: a ``composer.optim`` scheduler class (``name: MultiStepScheduler``, ``milestones: [...]``);
* ``algorithms`` / ``callbacks`` / ``loggers``: ``{ClassName: {kwargs}}`` from ``composer.algorithms`` /
  ``composer.callbacks`` / ``composer.loggers`` (new objects are built for every level).

Everything is built once in :func:`build_recipe` before any training, so a bad name or keyword stops
the run with a message naming the key.
"""

from __future__ import annotations

import difflib
import inspect
import os
from types import ModuleType
from typing import Any, Optional, Sequence

import composer.algorithms
import composer.callbacks
import composer.loggers
import composer.optim
import torch
from composer.core import Time, TimeUnit
from composer.models import ComposerModel
from composer.utils import dist, reproducibility
from omegaconf import DictConfig, OmegaConf

from composer_imp.artifacts import RunFolder
from composer_imp.config import ConfigError
from composer_imp.data import _per_rank, make_loaders
from composer_imp.masks import full_mask
from composer_imp.models import build_model
from composer_imp.orchestrator import IMPConfig, LevelOrchestrator
from composer_imp.rewind import rewind_batches

__all__ = ['build_recipe', 'build_object', 'run_config', 'Recipe']


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
            raise ConfigError(f"{key}.{unknown[0]} is not an argument of {name}; valid: {', '.join(p for p in params if p not in ('self', 'params'))}.")
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f'{key}: could not build {name}({kwargs}): {e}') from None


def _split(section: Any) -> tuple[str, dict]:
    spec = dict(OmegaConf.to_container(section, resolve=True)) if isinstance(section, DictConfig) else dict(section)
    return spec.pop('name'), spec


def _named_objects(section: Any, namespace: ModuleType, key: str) -> list:
    spec = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section or {})
    return [build_object([namespace], name, dict(kwargs or {}), f'{key}.{name}') for name, kwargs in spec.items()]


class Recipe:
    """A config turned into the two functions the :class:`LevelOrchestrator` needs.

    Dataloaders are built once here and reused by every level; model, optimizer, scheduler,
    algorithms, callbacks and loggers are built fresh for each level.
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
        if data_name == 'streaming':  # StreamingDataset wants the per-device batch sizes at construction
            data_kwargs['device_batch_size'], data_kwargs['device_eval_batch_size'] = _per_rank(
                loader_kwargs['batch_size'], loader_kwargs.get('eval_batch_size'))
        try:
            self.sweep_data, self.train_dataloader, self.eval_dataloader = make_loaders(
                data_name, data_kwargs, loader_kwargs, seed=cfg.seed)
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e)) from None
        self._first_seed, self._data_offset = cfg.seed, 0  # see reseed()
        self.model_name, self.model_kwargs = _split(cfg.model)
        self.imp = IMPConfig(**OmegaConf.to_container(cfg.imp, resolve=True))
        self._validate()

    def reseed(self, seed: int) -> None:
        """Make the recipe another replicate: initialization, Trainer RNG and training data order follow ``seed``.

        The loaders are kept (Streaming allows one dataset per folder per process); their shuffling seeds move
        by 1,000,003 per unit of seed, and persistent loader workers are restarted to see the new seeds.
        """
        # Data seeds move by a large stride: orders are drawn from (data seed + epoch), so a stride of 1 would give
        # replicate i at epoch e the order of replicate 0 at epoch e + i.
        offset = (seed - self._first_seed) * 1_000_003 - self._data_offset
        self._data_offset += offset
        self.cfg.seed = seed
        loader = self.train_dataloader
        sampler = getattr(loader, 'sampler', None)
        if hasattr(sampler, 'seed'):  # Composer's DistributedSampler
            sampler.seed += offset
        dataset = getattr(loader, 'dataset', None)
        if hasattr(dataset, 'shuffle_seed'):  # StreamingDataset
            dataset.shuffle_seed += offset
        order = getattr(loader, 'traversal_order', None)
        if getattr(order, 'seed', None) is not None:  # FFCV, and its per-rank sampler under the launcher
            order.seed += offset
            if getattr(order, 'sampler', None) is not None:
                order.sampler.seed += offset
        iterator = getattr(loader, '_iterator', None)
        if iterator is not None:  # persistent workers hold copies of the dataset made with the old seeds
            iterator._shutdown_workers()
            loader._iterator = None

    # The two functions the orchestrator calls ------------------------------------------------
    def model_fn(self) -> ComposerModel:
        reproducibility.seed_all(self.cfg.seed)  # level 0's initialization follows the seed
        try:
            return build_model(self.model_name, **self.model_kwargs)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def trainer_kwargs_fn(self, model: ComposerModel, level: int) -> dict:
        cfg = self.cfg
        opt_name, opt_kwargs = _split(cfg.optimizer)
        optimizer = build_object([torch.optim, composer.optim], opt_name, opt_kwargs, 'optimizer', model.parameters())
        schedulers = []
        if cfg.scheduler is not None:
            sched_name, sched_kwargs = _split(cfg.scheduler)
            schedulers.append(build_object([composer.optim], sched_name, sched_kwargs, 'scheduler'))
        kwargs = dict(
            optimizers=optimizer,
            schedulers=schedulers,
            train_dataloader=self.train_dataloader,
            eval_dataloader=self.eval_dataloader,
            max_duration=cfg.max_duration,
            eval_interval=cfg.eval_interval,
            seed=cfg.seed,
            progress_bar=cfg.progress_bar,
            algorithms=_named_objects(cfg.algorithms, composer.algorithms, 'algorithms'),
            callbacks=_named_objects(cfg.callbacks, composer.callbacks, 'callbacks'),
            loggers=_named_objects(cfg.loggers, composer.loggers, 'loggers'),
            device=self.device,
        )
        if cfg.precision is not None:
            kwargs['precision'] = cfg.precision
        if cfg.device_train_microbatch_size is not None:
            kwargs['device_train_microbatch_size'] = cfg.device_train_microbatch_size
        return kwargs

    # Validation before any training ----------------------------------------------------------
    def _validate(self) -> None:
        cfg = self.cfg
        if cfg.device not in ('auto', 'cpu', 'gpu', 'mps'):
            raise ConfigError(f"device must be one of auto, cpu, gpu, mps; got {cfg.device!r}.")
        if cfg.device == 'gpu' and not torch.cuda.is_available():
            raise ConfigError('device=gpu but no CUDA GPU is visible; use device=cpu or device=auto.')
        for key in ('max_duration', 'eval_interval'):
            try:
                Time.from_timestring(str(cfg[key]))
            except ValueError:
                raise ConfigError(f'{key}={cfg[key]!r} is not a Composer time string such as "10ep" or "2000ba".') from None
        per_epoch = len(self.train_dataloader)
        total = Time.from_timestring(str(cfg.max_duration))
        if total.unit not in (TimeUnit.EPOCH, TimeUnit.BATCH):
            raise ConfigError(f'max_duration must be in epochs ("ep") or batches ("ba"); got {cfg.max_duration!r}.')
        total_batches = int(total.value) * (per_epoch if total.unit == TimeUnit.EPOCH else 1)
        try:
            tau = rewind_batches(self.imp.rewind, per_epoch)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if tau >= total_batches:
            raise ConfigError(f'imp.rewind={self.imp.rewind!r} is {tau} batches, not before max_duration={cfg.max_duration!r} '
                              f'({total_batches} batches at {per_epoch} batches per epoch). Choose an earlier rewind step.')
        model = self.model_fn()
        try:
            full_mask(model, self.imp.ignore)  # validates imp.ignore against the real parameter names
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.trainer_kwargs_fn(model, 0)  # builds optimizer, scheduler, algorithms, callbacks, loggers once


def build_recipe(cfg: DictConfig) -> Recipe:
    """Build (and so validate) everything a config describes, before any training."""
    return Recipe(cfg)


def run_config(cfg: DictConfig, overwrite: Optional[bool] = None) -> list:
    """Run IMP as a config describes; returns the summary rows (one list of rows per replicate if ``replicates > 1``)."""
    from composer_imp.replicates import analyze_replicates, replicate_folder

    recipe = build_recipe(cfg)
    overwrite = bool(cfg.overwrite if overwrite is None else overwrite)
    from composer_imp.analyze import analyze_run

    if cfg.replicates == 1:
        runs = _run_levels(recipe, cfg.save_folder, overwrite)
    else:
        if os.path.isfile(os.path.join(cfg.save_folder, 'config.yaml')):
            if not overwrite:
                raise ConfigError(f'save_folder={cfg.save_folder} holds a single IMP run; replicates={cfg.replicates} '
                                  'live in their own folder (replicate_XX inside save_folder). Choose another '
                                  'save_folder, or --overwrite to delete that run.')
            RunFolder(cfg.save_folder).clear()
        base_seed, runs = cfg.seed, []
        for i in range(cfg.replicates):
            recipe.reseed(base_seed + i)
            folder = replicate_folder(cfg.save_folder, i)
            if dist.get_global_rank() == 0:
                print(f'[composer-imp] replicate {i + 1}/{cfg.replicates}: seed {base_seed + i}, {folder}', flush=True)
            runs.append(_run_levels(recipe, folder, overwrite))
        recipe.reseed(base_seed)
    a = cfg.analysis
    if a.enabled:  # on every rank: the evaluations are spread over them
        analyze = analyze_run if cfg.replicates == 1 else analyze_replicates
        result = analyze(cfg.save_folder, list(a.betas), a.tolerance, a.recalibrate_bn, a.pairwise, a.planes, recipe=recipe)
        if dist.get_global_rank() == 0:
            epsilon = f'ε = {100 * result["epsilon"]:.2f} points; ' if 'epsilon' in result else ''
            print(f'[composer-imp] analysis written to {cfg.save_folder}/analysis; {epsilon}'
                  f'connected iff matching: {result["connected_iff_matching"]}', flush=True)
    return runs


def _run_levels(recipe: Recipe, save_folder: str, overwrite: bool) -> list[dict]:
    config = {k: v for k, v in OmegaConf.to_container(recipe.cfg, resolve=True).items() if k != 'overwrite'}
    config['save_folder'] = save_folder
    return LevelOrchestrator(recipe.model_fn, recipe.trainer_kwargs_fn, save_folder, recipe.imp, config=config,
                             overwrite=overwrite, device=recipe.device, sweep_data=recipe.sweep_data).run()
