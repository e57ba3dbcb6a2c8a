"""The YAML run configuration: schema, loading with dotted overrides, and validation of keys and types.

Top-level keys and the ``imp:`` section are checked against :class:`RunConfig`; an unknown key is an
error naming it and the nearest valid key. The ``model``, ``data``, ``optimizer`` and ``scheduler``
sections hold a ``name`` plus keyword arguments, checked against the signature of what they build
(see :mod:`composer_imp.recipes`).

Example:
    >>> cfg = load_config('yamls/quickstart.yaml', ['imp.levels=2', 'seed=3'])   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from composer_imp.orchestrator import IMPConfig

__all__ = ['RunConfig', 'ConfigError', 'load_config', 'config_from_dict']


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the key and the fix."""


@dataclass
class AnalysisConfig:
    """The ``analysis:`` section: run the error-landscape analysis right after the levels."""

    enabled: bool = False
    betas: list = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    tolerance: Optional[float] = None  # null: ε across replicates, or 0.01 for a single run
    recalibrate_bn: bool = False
    pairwise: bool = True
    planes: int = 0


@dataclass
class RunConfig:
    """Every top-level key a recipe YAML may set."""

    save_folder: str = '???'
    max_duration: str = '???'
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    scheduler: Optional[dict] = None
    imp: IMPConfig = field(default_factory=IMPConfig)
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
    replicates: int = 1  # N seeds of the whole run, each in save_folder/replicate_XX (composer_imp.replicates)


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


def config_from_dict(user: dict) -> DictConfig:
    """Validate a plain dict of settings against :class:`RunConfig` and return the merged, typed config."""
    if not isinstance(user, dict):
        raise ConfigError(f'A config must be a mapping of keys to values; got {type(user).__name__}.')
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
    try:
        IMPConfig(**OmegaConf.to_container(cfg.imp)).validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def load_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a YAML recipe, apply ``key=value`` dotted overrides, validate, return the config."""
    if not os.path.isfile(path):
        raise ConfigError(f'Config file {path!r} does not exist. Pass a recipe with -f, e.g. -f yamls/quickstart.yaml.')
    try:
        base = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come in several types
        raise ConfigError(f'{path} is not valid YAML: {e}') from None
    bad = [o for o in overrides if '=' not in o]
    if bad:
        raise ConfigError(f'Overrides must look like key=value (e.g. imp.levels=3); got {bad}.')
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f'Bad override: {e}') from None
    return config_from_dict(OmegaConf.to_container(merged, resolve=True))
