"""The YAML run configuration: schema, loading with dotted overrides, and validation of keys and types.

Top-level keys are checked against :class:`RunConfig`; an unknown key is an error naming it and the nearest
valid key. ``model``, ``data``, ``optimizer`` and ``scheduler`` hold a ``name`` plus keyword arguments;
``algorithms``, ``callbacks`` and ``loggers`` map class names to keyword arguments. IMP is enabled like any
Composer algorithm: ``algorithms: {IMP: {ratio: 0.2, rewind: 1ep}}`` (or ``AdaptiveIMP``); the level loop's
settings are top-level keys (``levels``, ``target_sparsity``, ``checkpoint_interval``, ``replicates``,
``controls``). Every keyword is checked against the signature of what it builds (:mod:`composer_imp.recipes`).

The ``imp:`` block of composer-imp 0.1 is a deprecated alias, translated by :func:`translate_imp_block`.

Example:
    >>> cfg = config_from_dict({'save_folder': 'runs/x', 'max_duration': '2ep', 'model': {'name': 'small_cnn'},
    ...                         'data': {'name': 'digits', 'batch_size': 64}, 'optimizer': {'name': 'SGD', 'lr': 0.1},
    ...                         'algorithms': {'IMP': {'rewind': '5ba'}}, 'levels': 3})
    >>> cfg.levels, dict(cfg.algorithms.IMP)
    (3, {'rewind': '5ba'})
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from composer_imp.run_folder import IMP_NAMES

__all__ = ['RunConfig', 'ConfigError', 'load_config', 'config_from_dict', 'translate_imp_block', 'IMP_NAMES']

log = logging.getLogger(__name__)

class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the key and the fix."""


@dataclass
class AnalysisConfig:
    """The ``analysis:`` section: run the error-landscape analysis right after the levels."""

    enabled: bool = False
    betas: list = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    tolerance: Optional[float] = None  # null: ε across replicates, or criteria.DEFAULT_TOLERANCE for a single run
    recalibrate_bn: bool = False
    pairwise: bool = True
    planes: int = 0


@dataclass
class ControlsConfig:
    """The ``controls:`` section: control runs beside the ticket at some pruned levels (composer_imp.controls)."""

    kinds: list = field(default_factory=list)
    levels: list = field(default_factory=list)


@dataclass
class LegacyIMPConfig:
    """The deprecated ``imp:`` block of composer-imp 0.1 (translated by :func:`translate_imp_block`)."""

    levels: int = 5
    ratio: float = 0.2
    rewind: Any = '0ba'
    ignore: list = field(default_factory=list)
    scope: str = 'global'
    checkpoint_interval: Optional[str] = None
    target_sparsity: Optional[float] = None
    adaptive: dict = field(default_factory=dict)
    controls: list = field(default_factory=list)
    control_levels: list = field(default_factory=list)


@dataclass
class RunConfig:
    """Every top-level key a recipe YAML may set."""

    save_folder: str = '???'
    max_duration: str = '???'
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    scheduler: Optional[dict] = None
    levels: int = 5
    target_sparsity: Optional[float] = None
    checkpoint_interval: Optional[str] = None
    metric: Optional[str] = None  # eval metric recorded as each level's accuracy (default: the first accuracy metric)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    run_name: Optional[str] = None
    seed: int = 17
    device: str = 'auto'
    precision: Optional[str] = None
    eval_interval: str = '1ep'
    device_train_microbatch_size: Optional[Any] = None
    progress_bar: bool = True
    algorithms: dict = field(default_factory=dict)
    callbacks: dict = field(default_factory=dict)
    loggers: dict = field(default_factory=dict)
    overwrite: bool = False
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    replicates: int = 1  # N seeds of the whole run, each in save_folder/replicate_XX


_REQUIRED = ('save_folder', 'max_duration', 'model', 'data', 'optimizer')


def _check_keys(user: dict, schema: type, prefix: str = '') -> None:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in user.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ''
            raise ConfigError(f"Unknown config key '{prefix}{key}'.{hint} Valid keys here: {', '.join(sorted(fields))}.")
        nested = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(nested) and isinstance(value, dict):
            _check_keys(value, nested, f'{prefix}{key}.')


def translate_imp_block(user: dict) -> dict:
    """The same settings with a deprecated ``imp:`` block moved to ``algorithms.IMP`` / ``AdaptiveIMP`` and the
    level loop's top-level keys (``imp.levels`` → ``levels``, ``imp.adaptive.enabled`` → ``AdaptiveIMP``, ...)."""
    user = dict(user)
    user.pop('data_seed', None)  # recorded by find_ticket in a replicate's config.yaml; not a recipe setting
    if user.get('imp') is None:
        return user
    if isinstance(user['imp'], dict) and 'name' in user['imp']:
        user.pop('imp')  # a config.yaml written by find_ticket: the component's settings, also under algorithms
        return user
    _check_keys(user['imp'], LegacyIMPConfig, 'imp.')
    imp = dict(user.pop('imp'))
    if any(name in (user.get('algorithms') or {}) for name in IMP_NAMES):
        raise ConfigError('The config enables IMP twice: under algorithms and in the deprecated imp: block. Keep '
                          'algorithms.IMP (or AdaptiveIMP) and move the imp: settings there.')
    adaptive = dict(imp.pop('adaptive', None) or {})
    name = 'AdaptiveIMP' if adaptive.pop('enabled', False) else 'IMP'
    component = {k: imp.pop(k) for k in ('ratio', 'rewind', 'ignore', 'scope') if k in imp}
    if name == 'AdaptiveIMP':
        component.update(adaptive)
    user['algorithms'] = {**(user.get('algorithms') or {}), name: component}
    for key in ('levels', 'target_sparsity', 'checkpoint_interval'):
        if key in imp:
            user[key] = imp.pop(key)
    if imp.get('controls') or imp.get('control_levels'):
        user['controls'] = {'kinds': imp.pop('controls', []), 'levels': imp.pop('control_levels', [])}
    log.warning('The imp: block is deprecated: enable IMP under algorithms (algorithms.%s: %s) and set levels, '
                'target_sparsity and checkpoint_interval at the top level.', name, component)
    return user


def config_from_dict(user: dict) -> DictConfig:
    """Validate a plain dict of settings against :class:`RunConfig` and return the merged, typed config."""
    if not isinstance(user, dict):
        raise ConfigError(f'A config must be a mapping of keys to values; got {type(user).__name__}.')
    user = translate_imp_block(user)
    _check_keys(user, RunConfig)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(user))
    except OmegaConfBaseException as e:
        key = getattr(e, 'full_key', None) or ''
        raise ConfigError(f"Bad value for config key '{key}': {str(e).splitlines()[0]}") from None
    missing = [k for k in _REQUIRED if OmegaConf.is_missing(cfg, k) or (k in ('model', 'data', 'optimizer') and not cfg[k])]
    if missing:
        raise ConfigError(f"Missing required config key(s): {', '.join(missing)}. Every recipe sets "
                          f"{', '.join(_REQUIRED)} (see yamls/quickstart.yaml).")
    for section in ('model', 'data', 'optimizer'):
        if 'name' not in cfg[section]:
            raise ConfigError(f"Config section '{section}' needs a 'name' (e.g. {section}.name=...).")
    if cfg.scheduler is not None and 'name' not in cfg.scheduler:
        raise ConfigError("Config section 'scheduler' needs a 'name' (a composer.optim scheduler class, e.g. MultiStepScheduler).")
    if cfg.replicates < 1:
        raise ConfigError(f'replicates={cfg.replicates} must be at least 1 (the number of seeds of the whole IMP run).')
    if cfg.analysis.tolerance is not None and not 0 <= cfg.analysis.tolerance < 1:
        raise ConfigError(f'analysis.tolerance={cfg.analysis.tolerance} must be an error difference in [0, 1), or null.')
    enabled = [name for name in IMP_NAMES if name in cfg.algorithms]
    if len(enabled) != 1:
        raise ConfigError(f'Enable exactly one of {", ".join(IMP_NAMES)} under algorithms (e.g. algorithms.IMP: '
                          f'{{ratio: 0.2, rewind: 1ep}}); this config has {enabled or "none"}.')
    if cfg.levels < 0:
        raise ConfigError(f'levels={cfg.levels} must be a whole number >= 0 (pruned levels after the dense one).')
    if cfg.analysis.enabled and cfg.levels < 1:
        raise ConfigError(f'analysis.enabled needs at least one pruned level (levels >= 1): it compares levels along '
                          f'linear paths; levels={cfg.levels}. Raise levels, or set analysis.enabled=false.')
    if cfg.analysis.planes < 0 or cfg.analysis.planes == 1:
        raise ConfigError(f'analysis.planes={cfg.analysis.planes} must be 0 (no 2-D slices) or a grid size of at '
                          'least 2 (the paper: 51).')
    bad = [l for l in cfg.controls.levels if isinstance(l, bool) or not isinstance(l, int) or not 1 <= l <= cfg.levels]
    if bad:
        raise ConfigError(f'controls.levels must be pruned levels between 1 and levels={cfg.levels}; got {bad}.')
    return cfg


def load_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a YAML recipe, apply ``key=value`` dotted overrides, validate, return the config."""
    if not os.path.isfile(path):
        raise ConfigError(f'Config file {path!r} does not exist. Pass a recipe with -f, e.g. -f yamls/quickstart.yaml.')
    try:
        base = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come in several types
        raise ConfigError(f'{path} is not valid YAML: {e}') from None
    if not isinstance(base, DictConfig):
        raise ConfigError(f'{path} must hold a mapping of recipe keys (save_folder: ..., model: ..., ...); it holds a '
                          f'{"list" if base is not None else "nothing"}. See yamls/quickstart.yaml.')
    bad = [o for o in overrides if '=' not in o]
    if bad:
        raise ConfigError(f'Overrides must look like key=value (e.g. levels=3); got {bad}.')
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f'Bad override: {e}') from None
    return config_from_dict(OmegaConf.to_container(merged, resolve=True))
