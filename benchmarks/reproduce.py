"""Reproduce the paper's two claims on real data: one resumable command that writes a results page with figures.

    python benchmarks/reproduce.py --out runs/reproduce                 # Fashion-MNIST on a CPU; docs/results.md
    python benchmarks/reproduce.py --out runs/reproduce --stages fixed,landscape
    python benchmarks/reproduce.py --recipe cifar10_resnet20 --data-root /data --out runs/reproduce_cifar10   # a GPU
    python benchmarks/reproduce.py --recipe cifar10_resnet20 --smoke --synthetic-data --out runs/gpu_smoke
    python benchmarks/reproduce.py --recipe digits --smoke --out /tmp/smoke     # the plumbing, about a minute on CPU

Stages, each in its own folder under ``--out``; re-running the same command skips finished work and resumes the rest
(``find_ticket`` resumes its levels, the analyses their cached evaluations, the controls their finished branches):

* ``fixed``: fixed-20% IMP with weight rewinding, ``--seeds`` replicates (``find_ticket(replicates=N)``), extended one
  level at a time until the recipe's ``target_sparsity`` is reached or its ``levels`` cap (with
  ``Plan.stop_when_not_matching``, also once two consecutive pruned levels stop matching: mean accuracy over the
  seeds below the mean dense accuracy minus ε, ε = the std of the dense accuracy across seeds, the paper's).
* ``adaptive``: AdaptiveIMP with the project's defaults, same seeds, same stopping rule.
* ``tau0``: fixed-20% IMP rewound to τ = 0 (the paper's contrast, Fig. 2 and 5), one seed.
* ``rewinding``: fixed-20% IMP with ``IMP(rewind_optimizer=True, data_order='replay')`` (levels share the pretraining's
  momentum and data order from τ), seed of replicate 0 of ``fixed``, beside that replicate (OpenLTH's rewinding: a
  fresh optimizer and a new data order per level): accuracy per level and successive barriers.
* ``oneshot``: one-shot pruning of the dense solution to 5%, 2% and 1% remaining, retrained from the rewind point:
  an IMP run with one pruned level whose ratio is 0.95 / 0.98 / 0.99, same seed and data order as replicate 0 of
  ``fixed`` (so its level 0 is that replicate's dense solution, retrained; the report checks the weights' hash).
* ``landscape``: :func:`composer_imp.replicates.analyze_replicates` over ``fixed`` (matching, barriers, connected
  iff matching, LCS-sets) on the test set (or ``Plan.test_subsample`` of it); the pairwise maximum error on every ``--pairwise-stride``-th
  level; 2-D slices at one matching and one non-matching level; :func:`composer_imp.analysis.analyze_run` over
  ``tau0`` and ``rewinding`` with the same ε.
* ``controls``: :func:`composer_imp.run_controls` (random mask, reinit) at the sparsest matching level and the
  sparsest level trained.
* ``compute``: Figure 4 (accuracy against cumulative compute, training plus sweeps) and the compute ratio.
* ``report``: ``docs/results.md`` (``--results``) with every figure under ``docs/results/`` and every table.

Every stage records its wall time in ``OUT/stages.json`` (added up over invocations; the time of an invocation
killed with SIGKILL is lost, the work it finished is not).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import pickle
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import composer  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from composer_imp import find_ticket, load_mask, prunable_parameters, run_controls  # noqa: E402
from composer_imp.analysis import LandscapeSettings, analyze_run  # noqa: E402
from composer_imp.config import config_from_dict, load_config  # noqa: E402
from composer_imp.connectivity import DEFAULT_BETAS, linear_path, plane_slice  # noqa: E402
from composer_imp.criteria import DEFAULT_TOLERANCE, epsilon as estimate_epsilon, iff_verdict, is_connected, is_matching  # noqa: E402,E501
from composer_imp.models import build_model  # noqa: E402
from composer_imp.plots import draw_plane, draw_successive_paths, subplots  # noqa: E402
from composer_imp.recipes import Recipe, build_recipe  # noqa: E402
from composer_imp.replicates import analyze_replicates, stats  # noqa: E402
from composer_imp.run_folder import IMP_NAMES, RunFolder, atomic_write_text  # noqa: E402

log = logging.getLogger('reproduce')

RECIPES = {
    'fmnist': 'yamls/fmnist_reproduce.yaml',
    'cifar10_resnet20': 'yamls/cifar10_resnet20_imp.yaml',
    'digits': 'yamls/quickstart.yaml',
}
STAGES = ('fixed', 'adaptive', 'tau0', 'rewinding', 'oneshot', 'controls', 'landscape', 'compute', 'report')
# Small, short versions of each recipe for --smoke (plumbing on a CPU, or a few minutes on a lent GPU).
SMOKE_OVERRIDES = {
    'fmnist': ['levels=2', 'data.train_subset=2048', 'max_duration=2ep', 'eval_interval=2ep',
               'algorithms.IMP.rewind=4ba'],
    'cifar10_resnet20': ['levels=2', 'data.train_subset=2560', 'max_duration=60ba', 'eval_interval=60ba',
                         'algorithms.IMP.rewind=10ba', 'checkpoint_interval=null', 'data.num_workers=2'],
    'digits': ['levels=2', 'max_duration=2ep', 'eval_interval=2ep', 'algorithms.IMP.rewind=4ba', 'model.width=8'],
}
# Every run of this script: no progress bars, no landscape analysis inside run_config (the stages call it).
COMMON_OVERRIDES = ['progress_bar=false', 'analysis.enabled=false', 'overwrite=false']
PAPER_COMPUTE_SAVING = 0.33  # Figure 4: "a 33% improvement in training compute" (7 retrainings instead of 11)


@dataclass(frozen=True)
class Plan:
    """What the stages do beyond the recipe: seeds, the contrast and one-shot runs, the analysis economies.

    Attributes:
        seeds: replicates of the fixed and adaptive runs (seeds ``seed .. seed + seeds - 1``).
        oneshot_remaining: weights remaining after the one-shot pruning of the dense solution.
        tau0_levels: pruned levels of the τ = 0 run (``None``: as many as the fixed run's seed 0, beyond its matching
            limit, where the paper's contrast shows).
        rewinding_levels: pruned levels of the run that rewinds the optimizer and replays the data order (``None``:
            as the fixed run's seed 0).
        test_subsample: test examples the landscape analysis evaluates (a fixed subset; ``None``: all).
        betas: points on every successive path (and the LCS-set paths) of the analysis.
        pairwise_betas: points on the paths of the pairwise maximum-error heatmap.
        pairwise_stride: the heatmap pairs every ``pairwise_stride``-th level (0, stride, 2 stride, ...).
        plane_grid: grid size of the two 2-D slices (the three networks are evaluated exactly besides).
        stop_when_not_matching: stop the fixed and adaptive runs once two consecutive pruned levels are not matching
            (an economy the issue allows). Off for Fashion-MNIST: with ε from 3 seeds (≈ 0.2 points) levels stop
            matching by a hair long before pruning costs accuracy, and the claims are tested down to 1% instead.
        control_kinds: controls at the two sparsities.
        control_replicates: how many of the fixed run's replicates get controls.
        adaptive: AdaptiveIMP keyword arguments beyond the recipe's ``ratio`` and ``rewind`` (empty: the project's
            defaults).
    """

    seeds: int = 3
    oneshot_remaining: tuple = (0.05, 0.02, 0.01)
    tau0_levels: Optional[int] = None
    rewinding_levels: Optional[int] = None
    test_subsample: Optional[int] = None
    betas: tuple = DEFAULT_BETAS
    pairwise_betas: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    pairwise_stride: int = 2
    plane_grid: int = 11
    stop_when_not_matching: bool = False
    control_kinds: tuple = ('random_mask', 'reinit')
    control_replicates: int = 3
    adaptive: dict = field(default_factory=dict)


PLANS = {'fmnist': Plan(), 'cifar10_resnet20': Plan(plane_grid=21), 'digits': Plan()}
SMOKE_PLAN = Plan(seeds=2, oneshot_remaining=(0.02,), tau0_levels=2, rewinding_levels=2, test_subsample=200, betas=(0.0, 0.5, 1.0),
                  pairwise_betas=(0.0, 0.5, 1.0), pairwise_stride=1, plane_grid=4, control_replicates=1,
                  adaptive={'subsample': 256, 'batch_size': 128})


# ---- small helpers ---------------------------------------------------------------------------------------------
def read_json(path: str) -> Any:
    """The JSON content of ``path``, or ``None`` when it does not exist (yet)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value: Any) -> None:
    """Write ``value`` as JSON atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(json.dumps(value, indent=2), path)


def pct(x: Optional[float], digits: int = 2) -> str:
    """A fraction as a percentage string (``–`` for missing)."""
    return '–' if x is None else f'{100 * x:.{digits}f}%'


def pm(s: Optional[dict], digits: int = 2, scale: float = 100.0) -> str:
    """``mean ± std`` of a :func:`stats` dict, scaled (default: percent)."""
    if s is None:
        return '–'
    return f'{scale * s["mean"]:.{digits}f} ± {scale * s["std"]:.{digits}f}'


def recorded_config(cfg: DictConfig) -> dict:
    """The settings ``find_ticket`` records in ``config.yaml`` (what ``run_config`` records)."""
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != 'overwrite'}


def with_changes(cfg: DictConfig, changes: dict, algorithm: Optional[str] = None, extra: Optional[dict] = None) -> DictConfig:
    """``cfg`` with top-level ``changes``, the IMP component renamed to ``algorithm`` and its arguments updated."""
    user = OmegaConf.to_container(cfg, resolve=True)
    user.update(changes)
    name = next(n for n in IMP_NAMES if n in user['algorithms'])
    kwargs = {**(user['algorithms'].pop(name) or {}), **(extra or {})}
    user['algorithms'][algorithm or name] = kwargs
    return config_from_dict(user)


def imp_kwargs(cfg: DictConfig) -> dict:
    """The keyword arguments of the config's IMP component."""
    name = next(n for n in IMP_NAMES if n in cfg.algorithms)
    return dict(OmegaConf.to_container(cfg.algorithms[name], resolve=True) or {})


def run_rows(folder: str) -> list[list[dict]]:
    """The summary rows of every run in ``folder`` (one list per replicate; a single run gives one list)."""
    reps = [f.root for f in RunFolder(folder).replicates()]
    folders = reps if reps else [folder]
    out = []
    for f in folders:
        if os.path.isfile(RunFolder(f).summary):
            out.append(RunFolder(f).read_summary())
    return out


def levels_done(folder: str) -> int:
    """The most pruned levels any run in ``folder`` has finished (0 when none)."""
    reps = [f.root for f in RunFolder(folder).replicates()] or [folder]
    done = [len(RunFolder(f).levels_done()) - 1 for f in reps if os.path.isdir(f)]
    return max(done, default=0)


def matching_table(runs: Sequence[Sequence[dict]], reference: Optional[Sequence[Sequence[dict]]] = None) -> dict:
    """Mean ± std per level over replicates and which levels match (the paper's criterion, in test accuracy).

    A level matches when its mean accuracy is at least the mean dense accuracy minus ε, ε the standard deviation of
    the dense accuracy across the replicates of ``reference`` (default: ``runs``); with one replicate ε is 1 point.
    Only the levels every replicate has are tabulated.
    """
    reference = reference or runs
    dense = [rows[0]['accuracy'] for rows in reference]
    epsilon = estimate_epsilon(dense)['value'] if len(dense) > 1 else DEFAULT_TOLERANCE
    threshold = statistics.fmean(dense) - epsilon
    levels = []
    for level in range(min(len(rows) for rows in runs)):
        at = [rows[level] for rows in runs]
        accuracy = stats([r['accuracy'] for r in at])
        levels.append({
            'level': level, 'accuracy': accuracy, 'weights_remaining': stats([r['weights_remaining'] for r in at]),
            'ratio': stats([r.get('ratio') or 0.0 for r in at]),
            'cumulative_compute': stats([r.get('cumulative_compute', r.get('cumulative_steps', 0)) for r in at]),
            'cumulative_steps': stats([r.get('cumulative_steps', 0) for r in at]),
            'matching': is_matching(1 - accuracy['mean'], 1 - statistics.fmean(dense), epsilon),
        })
    return {'dense': stats(dense), 'epsilon': epsilon, 'threshold': threshold, 'levels': levels}


def stopping_reason(table: dict, runs: Sequence[Sequence[dict]], requested: int, cap: int,
                    target: Optional[float], stop_when_not_matching: bool = True) -> Optional[str]:
    """Why the level loop of a stage stops here, or ``None`` to train one more level."""
    levels = table['levels']
    for a, b in zip(levels[1:], levels[2:]):
        if stop_when_not_matching and not a['matching'] and not b['matching']:
            return f'levels {a["level"]} and {b["level"]} are both not matching'
    if target is not None and all(1 - rows[-1]['weights_remaining'] >= target - 1e-9 for rows in runs):
        return f'target_sparsity {target} reached'
    if requested >= cap:
        return f'level cap {cap} reached'
    return None


def machine() -> dict:
    """The machine this invocation runs on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {'cpu': cpu, 'cores': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'gpu': gpu,
            'torch': torch.__version__, 'composer': composer.__version__, 'python': platform.python_version(),
            'platform': platform.platform()}


def write_synthetic_cifar(root: str, train: int = 2560, test: int = 512) -> str:
    """Random CIFAR-10 python batches (the real format) under ``root``, for a GPU smoke without CIFAR; returns root."""
    folder = os.path.join(root, 'cifar-10-batches-py')
    if os.path.isfile(os.path.join(folder, 'test_batch')):
        return root
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in [(f'data_batch_{i}', train // 5) for i in range(1, 6)] + [('test_batch', test)]:
        batch = {b'batch_label': name.encode(), b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b'labels': rng.integers(0, 10, n).tolist()}
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump(batch, f)
    return root


# ---- the context shared by the stages --------------------------------------------------------------------------
class Reproduction:
    """The recipe, the plan and the output folders of one ``--out``; each stage is a method."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.recipe_name = args.recipe
        self.yaml = os.path.join(ROOT, RECIPES[args.recipe])
        base = PLANS[args.recipe] if not args.smoke else SMOKE_PLAN
        changes = {}
        if args.seeds is not None:
            changes['seeds'] = args.seeds
        if args.test_subsample is not None:
            changes['test_subsample'] = args.test_subsample or None
        if args.pairwise_stride is not None:
            changes['pairwise_stride'] = args.pairwise_stride
        self.plan = dataclasses.replace(base, **changes)
        overrides = list(COMMON_OVERRIDES)
        if args.smoke:
            overrides += SMOKE_OVERRIDES[args.recipe]
        data_root = args.data_root
        if args.synthetic_data:
            data_root = write_synthetic_cifar(os.path.join(self.out, 'synthetic_cifar10'))
        if data_root:
            overrides.append(f'data.data_root={data_root}')
        overrides += list(args.overrides)
        self.overrides = overrides
        self.cfg = load_config(self.yaml, overrides)
        default_results = os.path.join(ROOT, 'docs', 'results.md')
        if args.smoke or args.recipe != 'fmnist':
            default_results = os.path.join(self.out, 'results.md')
        self.results = os.path.abspath(args.results or default_results)
        self.figures = os.path.splitext(self.results)[0]
        self.book_path = os.path.join(self.out, 'stages.json')
        self.book = read_json(self.book_path) or {'stages': {}, 'invocations': []}
        self._recipes: dict[str, Recipe] = {}

    # ---- bookkeeping ---------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path under ``--out``."""
        return os.path.join(self.out, *parts)

    def save_book(self) -> None:
        """Write ``stages.json``."""
        write_json(self.book_path, self.book)

    def stage_key(self, stage: str) -> str:
        """What a finished stage was made with: the recipe and the plan (a change re-runs the stage, which resumes)."""
        text = json.dumps({'stage': stage, 'config': recorded_config(self.cfg),
                           'plan': dataclasses.asdict(self.plan)}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run_stage(self, stage: str, work: Callable[[], Optional[dict]], always: bool = False) -> None:
        """Run ``work`` unless the stage finished with the same settings; add its wall time to ``stages.json``."""
        entry = self.book['stages'].setdefault(stage, {'seconds': 0.0, 'invocations': 0, 'done': False})
        key = self.stage_key(stage)
        if entry.get('done') and entry.get('key') == key and not always:
            log.info('stage %s: already done (%.0f s in total), skipped', stage, entry['seconds'])
            return
        log.info('stage %s: starting', stage)
        start = time.perf_counter()
        done = False
        try:
            note = work()
            done = note is None or not note.get('incomplete')
            entry['note'] = (note or {}).get('note')
        finally:
            entry['seconds'] += time.perf_counter() - start
            entry['invocations'] += 1
            entry['done'], entry['key'] = done, key
            self.save_book()
        log.info('stage %s: %s in %.0f s (%.0f s over all invocations)', stage, 'done' if done else 'incomplete',
                 time.perf_counter() - start, entry['seconds'])

    def finished(self, stage: str) -> bool:
        """Whether ``stage`` finished with the current settings (the later stages read only finished ones)."""
        entry = self.book['stages'].get(stage) or {}
        return bool(entry.get('done')) and entry.get('key') == self.stage_key(stage)

    def depth(self, levels: Optional[int]) -> Optional[int]:
        """``levels``, or (``None``) as many pruned levels as replicate 0 of the finished fixed stage trained."""
        if levels is not None:
            return levels
        return len(run_rows(self.path('fixed'))[0]) - 1 if self.finished('fixed') else None

    def recipe(self, cfg: DictConfig) -> Recipe:
        """The recipe of ``cfg`` (built once per distinct config: it loads the data)."""
        key = OmegaConf.to_yaml(cfg)
        if key not in self._recipes:
            self._recipes[key] = build_recipe(cfg)
        return self._recipes[key]

    # ---- the configs of the stages ---------------------------------------------------------------------------
    def fixed_cfg(self) -> DictConfig:
        """Fixed-ratio IMP: the recipe itself."""
        return with_changes(self.cfg, {'replicates': self.plan.seeds})

    def adaptive_cfg(self) -> DictConfig:
        """AdaptiveIMP with the recipe's ratio (the floor) and rewind step and the project's defaults otherwise."""
        return with_changes(self.cfg, {'replicates': self.plan.seeds}, 'AdaptiveIMP', dict(self.plan.adaptive))

    def tau0_cfg(self, levels: int) -> DictConfig:
        """Fixed-ratio IMP rewound to step 0 (no early training: the paper's contrast)."""
        return with_changes(self.cfg, {'replicates': 1, 'levels': levels, 'target_sparsity': None},
                            extra={'rewind': '0ba'})

    def rewinding_cfg(self, levels: int) -> DictConfig:
        """Fixed-ratio IMP whose levels restore the momentum at τ and replay the pretraining's data order."""
        return with_changes(self.cfg, {'replicates': 1, 'levels': levels, 'target_sparsity': None},
                            extra={'rewind_optimizer': True, 'data_order': 'replay'})

    def oneshot_cfg(self, remaining: float) -> DictConfig:
        """One pruned level that keeps ``remaining`` of the dense solution's weights, same seed as replicate 0."""
        return with_changes(self.cfg, {'replicates': 1, 'levels': 1, 'target_sparsity': None},
                            extra={'ratio': round(1.0 - remaining, 6)})

    # ---- level loops ---------------------------------------------------------------------------------------------
    def ticket(self, cfg: DictConfig, folder: str, levels: int) -> list[list[dict]]:
        """``find_ticket`` for ``cfg`` in ``folder`` up to ``levels``; one list of rows per replicate."""
        recipe = self.recipe(cfg)
        runs = find_ticket(recipe.make_trainer, folder, levels, target_sparsity=cfg.target_sparsity,
                           checkpoint_interval=cfg.checkpoint_interval, seed=cfg.seed, replicates=cfg.replicates,
                           metric=cfg.metric, config=recorded_config(cfg), device=recipe.device)
        return runs if cfg.replicates > 1 else [runs]

    def until_not_matching(self, cfg: DictConfig, folder: str) -> dict:
        """Extend the run in ``folder`` one level at a time until :func:`stopping_reason` says stop."""
        cap = int(cfg.levels)
        requested = max(1, min(cap, levels_done(folder)))
        while True:
            runs = self.ticket(cfg, folder, requested)
            table = matching_table(runs)
            reason = stopping_reason(table, runs, requested, cap, cfg.target_sparsity, self.plan.stop_when_not_matching)
            last = table['levels'][-1]
            log.info('%s: %d levels; level %d: %.2f%% weights remaining, accuracy %s%% (dense %s%%, ε %.2f pts): %s',
                     os.path.basename(folder), requested, last['level'], 100 * last['weights_remaining']['mean'],
                     pm(last['accuracy']), pm(table['dense']), 100 * table['epsilon'],
                     'matching' if last['matching'] else 'not matching')
            if reason:
                log.info('%s: stopped: %s', os.path.basename(folder), reason)
                return {'table': table, 'stop': reason, 'levels_requested': requested}
            requested += 1

    # ---- the stages ----------------------------------------------------------------------------------------------
    def stage_fixed(self) -> None:
        """Fixed-20% IMP, ``seeds`` replicates, until matching ends (two levels) or the target."""
        write_json(self.path('fixed', 'stage.json'), self.until_not_matching(self.fixed_cfg(), self.path('fixed')))

    def stage_adaptive(self) -> None:
        """AdaptiveIMP, the same seeds and stopping rule."""
        write_json(self.path('adaptive', 'stage.json'),
                   self.until_not_matching(self.adaptive_cfg(), self.path('adaptive')))

    def stage_tau0(self) -> Optional[dict]:
        """Fixed-20% IMP rewound to τ = 0, one seed."""
        return self.single_run('tau0', self.plan.tau0_levels, self.tau0_cfg)

    def stage_rewinding(self) -> Optional[dict]:
        """Fixed-20% IMP with the optimizer state and data order of the pretraining replayed, one seed."""
        return self.single_run('rewinding', self.plan.rewinding_levels, self.rewinding_cfg)

    def single_run(self, stage: str, levels: Optional[int], make_cfg: Callable[[int], DictConfig]) -> Optional[dict]:
        """One seed of ``make_cfg(levels)`` in ``OUT/stage``; ``levels=None``: as deep as the finished fixed stage."""
        levels = self.depth(levels)
        if levels is None:
            log.warning('stage %s trains as many levels as the fixed stage: it needs the finished fixed stage', stage)
            return {'incomplete': True, 'note': 'fixed stage missing'}
        rows = self.ticket(make_cfg(levels), self.path(stage), levels)[0]
        write_json(self.path(stage, 'stage.json'), {'rows': rows})
        return None

    def stage_oneshot(self) -> None:
        """One-shot pruning of the dense solution to each of ``oneshot_remaining``, retrained from the rewind point."""
        runs = []
        for remaining in self.plan.oneshot_remaining:
            folder = self.path('oneshot', f'remaining_{100 * remaining:g}pct')
            rows = self.ticket(self.oneshot_cfg(remaining), folder, 1)[0]
            runs.append({'remaining_target': remaining, 'ratio': round(1.0 - remaining, 6), 'rows': rows})
        write_json(self.path('oneshot', 'stage.json'), {'runs': runs})

    def analysis_inputs(self) -> tuple[torch.nn.Module, DataLoader, Any, int]:
        """The analysis model, the fixed test subsample's loader, the training examples, and the subsample size."""
        recipe = self.recipe(self.fixed_cfg())
        loader = recipe.eval_dataloader
        data = loader.dataset
        n = self.plan.test_subsample
        if n is not None and n < len(data):
            idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].tolist()
            loader = DataLoader(Subset(data, idx), batch_size=loader.batch_size)
        return recipe.analysis_model(), loader, recipe.sweep_data, len(loader.dataset)

    def stage_landscape(self) -> Optional[dict]:
        """Replicate analysis of ``fixed``, the pairwise heatmap, two planes, and the τ = 0 run's analysis."""
        fixed = self.path('fixed')
        if not self.finished('fixed') or len(RunFolder(fixed).replicates()) < 2:
            log.warning('stage landscape needs the finished fixed stage (at least 2 seeds); skipped')
            return {'incomplete': True, 'note': 'fixed stage missing'}
        model, loader, train_data, examples = self.analysis_inputs()
        settings = LandscapeSettings(betas=list(self.plan.betas), tolerance=None, recalibrate_bn=False, pairwise=False,
                                     planes=0)
        rep = analyze_replicates(fixed, model, loader, train_data, settings)
        result = {'test_examples': examples, 'betas': list(self.plan.betas), 'epsilon': rep['epsilon'],
                  'tolerance': rep['tolerance'], 'dense_error': rep['dense_error'], 'levels': rep['levels'],
                  'successive': rep['successive'], 'verdict': rep['verdict']}
        batches = list(loader)
        result['pairwise'] = self.pairwise(model, batches, rep['levels'])
        result['planes'] = self.planes(model, batches, rep)
        missing = []
        for stage in ('tau0', 'rewinding'):  # single runs, judged with the replicates' ε
            if self.finished(stage):
                single = analyze_run(self.path(stage), model, loader, train_data,
                                     LandscapeSettings(betas=list(self.plan.betas), tolerance=rep['tolerance'],
                                                       recalibrate_bn=False, pairwise=False, planes=0))
                result[stage] = {key: single[key] for key in ('levels', 'successive', 'verdict', 'tolerance')}
            else:
                log.warning('stage landscape: the %s stage has not finished; its analysis is left out', stage)
                missing.append(stage)
        write_json(self.path('landscape', 'landscape.json'), result)
        return {'incomplete': True, 'note': f'{", ".join(missing)} analysis missing'} if missing else None

    def pairwise(self, model: torch.nn.Module, batches: list, levels: Sequence[dict]) -> dict:
        """Maximum error and barrier on the path between every pair of every ``pairwise_stride``-th level, mean over
        replicates (Appendix C's heatmap; the diagonal: each level's own error from the replicate analysis); each
        path cached in ``landscape/pairwise/``."""
        errors = {lv['level']: lv['error']['values'] for lv in levels}
        chosen = [lv['level'] for lv in levels][::self.plan.pairwise_stride]
        folders = [f.root for f in RunFolder(self.path('fixed')).replicates()]
        n = len(chosen)
        per_rep = []
        for r, folder in enumerate(folders):
            run = RunFolder(folder)
            weights: dict[int, dict] = {}
            max_error = [[None] * n for _ in range(n)]
            barrier = [[0.0 if i == j else None for j in range(n)] for i in range(n)]
            for i in range(n):
                max_error[i][i] = errors[chosen[i]][r]
                for j in range(i + 1, n):
                    a, b = chosen[i], chosen[j]
                    digests = [run.verified_row(a)['manifest']['weights.pt'], run.verified_row(b)['manifest']['weights.pt']]
                    cache = self.path('landscape', 'pairwise', f'replicate_{r:02d}_{a:02d}_{b:02d}.json')
                    hit = read_json(cache)
                    key = {'weights': digests, 'betas': list(self.plan.pairwise_betas), 'examples': sum(len(y) for _, y in batches)}
                    if hit is None or hit.get('key') != key:
                        for level in (a, b):
                            if level not in weights:
                                weights[level] = run.verified_weights(level)
                        path = linear_path(model, weights[a], weights[b], batches, list(self.plan.pairwise_betas))
                        hit = {'key': key, 'max_error': path['max_error'], 'barrier': path['barrier']}
                        write_json(cache, hit)
                    max_error[i][j] = max_error[j][i] = hit['max_error']
                    barrier[i][j] = barrier[j][i] = hit['barrier']
            per_rep.append({'max_error': max_error, 'barrier': barrier})
        mean = {key: [[statistics.fmean(p[key][i][j] for p in per_rep) for j in range(n)] for i in range(n)]
                for key in ('max_error', 'barrier')}
        return {'levels': chosen, 'betas': list(self.plan.pairwise_betas), **mean}

    def planes(self, model: torch.nn.Module, batches: list, rep: dict) -> list[dict]:
        """2-D slices (w_L, its projection, w_L+1) of replicate 0 at the sparsest level L whose plane lies between
        matching levels, and at the first level L whose next level is not matching."""
        matching = {lv['level']: lv['matching'] for lv in rep['levels']}
        last = max(matching)
        # Prefer pruned levels (L >= 1) with both ends matching; fall back on any plane whose far end matches.
        inside = ([l for l in range(1, last) if matching[l] and matching[l + 1]]
                  or [l for l in range(last) if matching[l + 1]])
        leaving = [l for l in range(last) if not matching[l + 1]]
        chosen = [('w_L+1 matching', inside[-1])] if inside else []
        chosen += [('w_L+1 not matching', leaving[0])] if leaving else []
        run = RunFolder(self.path('fixed')).replicates()[0]
        out = []
        for kind, level in chosen:
            digests = [run.verified_row(l)['manifest']['weights.pt'] for l in (level, level + 1)]
            key = {'weights': digests, 'grid': self.plan.plane_grid, 'examples': sum(len(y) for _, y in batches)}
            cache = self.path('landscape', f'plane_{level:02d}.json')
            hit = read_json(cache)
            if hit is None or hit.get('key') != key:
                a, b = run.verified_weights(level), run.verified_weights(level + 1)
                mask = load_mask(run.mask(level + 1))
                p = {k: (v * mask[k].to(v.dtype) if k in mask else v) for k, v in a.items()}
                hit = {'key': key, **plane_slice(model, a, p, b, batches, set(mask), grid=self.plan.plane_grid)}
                write_json(cache, hit)
            out.append({'kind': kind, 'level': level, 'next_matching': matching[level + 1],
                        **{k: v for k, v in hit.items() if k != 'key'}})
        return out

    def stage_controls(self) -> Optional[dict]:
        """Random-mask and reinit controls at the sparsest matching level and the sparsest level trained."""
        stage = read_json(self.path('fixed', 'stage.json'))
        if stage is None or not self.finished('fixed'):
            log.warning('stage controls needs the finished fixed stage; skipped')
            return {'incomplete': True, 'note': 'fixed stage missing'}
        levels = control_levels(stage['table'])
        if not levels:
            log.warning('stage controls: no pruned level to branch from; skipped')
            return {'incomplete': True, 'note': 'no pruned level'}
        recipe = self.recipe(self.fixed_cfg())
        rows = []
        for r, folder in enumerate([f.root for f in RunFolder(self.path('fixed')).replicates()][:self.plan.control_replicates]):
            tickets = {lv: RunFolder(folder).verified_row(lv) for lv in levels}
            for row in run_controls(recipe.make_trainer, folder, levels, list(self.plan.control_kinds)):
                rows.append({**row, 'replicate': r, 'ticket_accuracy': tickets[row['level']]['accuracy']})
        write_json(self.path('controls', 'controls.json'), {'levels': levels, 'rows': rows})
        return None

    def stage_compute(self) -> Optional[dict]:
        """Figure 4's numbers: the compute each method spends to first reach the sparsest level both reach matching."""
        fixed, adaptive = run_rows(self.path('fixed')), run_rows(self.path('adaptive'))
        if not (self.finished('fixed') and self.finished('adaptive')):
            log.warning('stage compute needs the finished fixed and adaptive stages; skipped')
            return {'incomplete': True, 'note': 'fixed or adaptive stage missing'}
        write_json(self.path('compute', 'compute.json'), compute_ratio(fixed, adaptive))
        return None

    def stage_report(self) -> None:
        """Figures and ``results.md`` from whatever the stages have written so far."""
        Report(self).write()


def control_levels(table: dict) -> list[int]:
    """The sparsest matching pruned level and the sparsest level trained (where a ticket's mask and weights should
    matter most), as many of these as exist."""
    pruned = [lv['level'] for lv in table['levels'][1:]]
    matching = [lv['level'] for lv in table['levels'][1:] if lv['matching']]
    first = matching[-1] if matching else (pruned[0] if pruned else None)
    return [] if first is None else [first] + [lv for lv in pruned[-1:] if lv != first]


def compute_ratio(fixed: list[list[dict]], adaptive: list[list[dict]]) -> dict:
    """X = the smallest weights remaining both methods reach while matching in the mean; the cumulative compute
    (training steps + sweep forward passes, in training-step equivalents) each seed spends to first reach ≤ X, and
    the ratio of the means over seeds (``None`` if a seed never reaches X)."""
    tables = {'fixed': matching_table(fixed), 'adaptive': matching_table(adaptive)}
    sparsest = {}
    for name, table in tables.items():
        matching = [lv for lv in table['levels'][1:] if lv['matching']]
        sparsest[name] = min((lv['weights_remaining']['mean'] for lv in matching), default=None)
    result = {'tables': tables, 'sparsest_matching': sparsest, 'X': None, 'reach': {}, 'ratio': None}
    if None in sparsest.values():
        return result
    x = max(sparsest.values())
    result['X'] = x
    for name, runs in (('fixed', fixed), ('adaptive', adaptive)):
        level = next(lv for lv in tables[name]['levels'] if lv['weights_remaining']['mean'] <= x + 1e-9)
        per_seed = []
        for rows in runs:
            first = next((r for r in rows if r['weights_remaining'] <= x + 1e-9), None)
            per_seed.append(None if first is None else {
                'level': first['level'], 'weights_remaining': first['weights_remaining'],
                'cumulative_compute': first.get('cumulative_compute', first.get('cumulative_steps')),
                'cumulative_steps': first.get('cumulative_steps'), 'accuracy': first['accuracy']})
        result['reach'][name] = {'level': level['level'], 'weights_remaining': level['weights_remaining'],
                                 'accuracy': level['accuracy'], 'matching': level['matching'],
                                 'cumulative_compute': level['cumulative_compute'],
                                 'cumulative_steps': level['cumulative_steps'], 'per_seed': per_seed}
    f, a = result['reach']['fixed'], result['reach']['adaptive']
    if any(s is None for s in f['per_seed'] + a['per_seed']):  # a seed that never got there: no ratio
        return result
    # Per seed first: an adaptive seed's level k need not have the sparsity of another seed's level k.
    for key, name in (('cumulative_compute', 'ratio'), ('cumulative_steps', 'steps_ratio')):
        result[name] = (statistics.fmean(s[key] for s in a['per_seed'])
                        / statistics.fmean(s[key] for s in f['per_seed']))
    pairs = list(zip(f['per_seed'], a['per_seed']))
    result['per_seed_ratio'] = [q['cumulative_compute'] / p['cumulative_compute'] for p, q in pairs]
    sweeps = [sum((r.get('sweep') or {}).get('step_equivalents', 0.0) for r in rows) for rows in adaptive]
    total = [rows[-1].get('cumulative_compute', 0.0) for rows in adaptive]
    result['sweep_share'] = statistics.fmean(s / t for s, t in zip(sweeps, total) if t) if any(total) else None
    return result


# ---- figures and the results page ------------------------------------------------------------------------------
class Report:
    """Figures under ``docs/results/`` and ``docs/results.md`` from the stages' outputs (missing parts are marked)."""

    def __init__(self, rep: Reproduction):
        self.rep = rep
        self.out = rep.out
        self.figures = rep.figures
        self.fixed = run_rows(rep.path('fixed'))
        self.adaptive = run_rows(rep.path('adaptive'))
        self.tau0 = (run_rows(rep.path('tau0')) or [None])[0]
        self.rewinding = (run_rows(rep.path('rewinding')) or [None])[0]
        self.fixed_stage = read_json(rep.path('fixed', 'stage.json'))
        self.adaptive_stage = read_json(rep.path('adaptive', 'stage.json'))
        self.oneshot = read_json(rep.path('oneshot', 'stage.json'))
        self.landscape = read_json(rep.path('landscape', 'landscape.json'))
        # each replicate's own analysis (judged with the replicates' ε), written by the landscape stage
        analyses = [read_json(os.path.join(f.analysis_dir, 'analysis.json')) or {}
                    for f in RunFolder(rep.path('fixed')).replicates()] if self.landscape else []
        self.replicate0_levels = analyses[0].get('levels', []) if analyses else []
        self.lcs = [{row['level']: row for row in a.get('lcs', [])} for a in analyses]  # Definition 2.1, per level
        self.controls = read_json(rep.path('controls', 'controls.json'))
        self.compute = read_json(rep.path('compute', 'compute.json'))
        self.fixed_table = matching_table(self.fixed) if self.fixed else None
        self.adaptive_table = matching_table(self.adaptive) if self.adaptive else None

    # ---- figures ---------------------------------------------------------------------------------------------
    def save(self, fig: Any, name: str, dpi: int, tight: bool = False) -> str:
        """Lay out, write and close ``fig`` as figure ``name``; returns its path (``tight``: crop to what is drawn)."""
        fig.tight_layout()
        os.makedirs(self.figures, exist_ok=True)
        path = os.path.join(self.figures, name)
        fig.savefig(path, dpi=dpi, bbox_inches='tight' if tight else None)
        return path

    def link(self, path: str, alt: str) -> str:
        """A markdown image link to ``path`` relative to the results page."""
        return f'![{alt}]({os.path.relpath(path, os.path.dirname(self.rep.results))})'

    def dense_band(self, ax: Any) -> None:
        """The matching band: mean dense accuracy ± ε of the fixed runs."""
        t = self.fixed_table
        ax.axhspan(100 * (t['dense']['mean'] - t['epsilon']), 100 * (t['dense']['mean'] + t['epsilon']), color='grey',
                   alpha=0.25, label=f'dense accuracy ± ε ({100 * t["epsilon"]:.2f} pts): matching above its floor')

    def plot_sparsity(self) -> Optional[str]:
        """Accuracy against weights remaining: fixed IMP (seeds, mean ± std), AdaptiveIMP, τ = 0, one-shot; the whole
        range and a zoom around the dense accuracy."""
        if not self.fixed:
            return None
        fig, axes = subplots(1, 2, figsize=(16, 5.6))
        for ax in axes:
            self.draw_sparsity(ax)
        dense, eps = 100 * self.fixed_table['dense']['mean'], 100 * self.fixed_table['epsilon']
        axes[1].set_ylim(dense - max(2.0, 8 * eps), dense + max(0.6, 3 * eps))
        axes[0].set_title('Accuracy against sparsity: IMP, AdaptiveIMP, τ = 0, one-shot pruning')
        axes[1].set_title('The same, zoomed on the dense accuracy ± ε')
        axes[0].legend(fontsize=8, loc='lower left')
        return self.save(fig, 'accuracy_vs_weights_remaining.png', 110)

    def draw_sparsity(self, ax: Any) -> None:
        """The curves of :meth:`plot_sparsity` on ``ax``."""
        self.dense_band(ax)
        for i, rows in enumerate(self.fixed):
            ax.plot([100 * r['weights_remaining'] for r in rows], [100 * r['accuracy'] for r in rows], color='tab:blue',
                    alpha=0.3, lw=1, label='fixed 20%, each seed' if i == 0 else None)
        t = self.fixed_table['levels']
        ax.errorbar([100 * lv['weights_remaining']['mean'] for lv in t], [100 * lv['accuracy']['mean'] for lv in t],
                    yerr=[100 * lv['accuracy']['std'] for lv in t], color='tab:blue', marker='o', capsize=3,
                    label=f'fixed 20%, mean ± std of {len(self.fixed)} seeds')
        for i, rows in enumerate(self.adaptive):
            ax.plot([100 * r['weights_remaining'] for r in rows], [100 * r['accuracy'] for r in rows], color='tab:orange',
                    marker='x', alpha=0.8, lw=1, label=f'AdaptiveIMP, each of {len(self.adaptive)} seeds' if i == 0 else None)
        if self.tau0:
            ax.plot([100 * r['weights_remaining'] for r in self.tau0], [100 * r['accuracy'] for r in self.tau0],
                    color='tab:red', marker='s', ms=4, label='fixed 20% rewound to τ = 0 (one seed)')
        for i, run in enumerate((self.oneshot or {}).get('runs', [])):
            row = run['rows'][-1]
            ax.plot([100 * row['weights_remaining']], [100 * row['accuracy']], ls='', marker='*', ms=14,
                    color='tab:purple', label='one-shot pruning of the dense solution' if i == 0 else None)
            ax.annotate(f'{100 * row["weights_remaining"]:.3g}%', (100 * row['weights_remaining'], 100 * row['accuracy']),
                        textcoords='offset points', xytext=(6, -12), fontsize=8, color='tab:purple')
        percent_log_axis(ax)
        ax.set_xlabel('weights remaining (%, log scale)')
        ax.set_ylabel('test accuracy (%, full test set)')
        ax.grid(alpha=0.3, which='both')

    def plot_compute(self) -> Optional[str]:
        """Figure 4: accuracy against cumulative compute, each seed and the means, fixed against adaptive."""
        if not (self.fixed and self.adaptive and self.compute):
            return None
        fig, ax = subplots(figsize=(9, 5.2))
        self.dense_band(ax)
        for name, runs, table, color, marker in (('fixed 20%', self.fixed, self.fixed_table, 'tab:blue', 'o'),
                                                 ('AdaptiveIMP', self.adaptive, self.adaptive_table, 'tab:orange', 'x')):
            for i, rows in enumerate(runs):
                ax.plot([r.get('cumulative_compute', r['cumulative_steps']) for r in rows],
                        [100 * r['accuracy'] for r in rows], color=color, alpha=0.3, lw=1, marker=marker, ms=3,
                        label=f'{name}, each seed' if i == 0 else None)
            t = table['levels']
            ax.plot([lv['cumulative_compute']['mean'] for lv in t], [100 * lv['accuracy']['mean'] for lv in t],
                    color=color, lw=2.2, marker=marker, label=f'{name}, mean of {len(runs)} seeds')
        x = self.compute.get('X')
        if x is not None:
            for name, color in (('fixed', 'tab:blue'), ('adaptive', 'tab:orange')):
                reach = self.compute['reach'][name]
                ax.axvline(reach['cumulative_compute']['mean'], color=color, ls='--', lw=1,
                           label=f'{name} first reaches ≤ {100 * x:.2f}% remaining (level {reach["level"]})')
        ax.set_xlabel('cumulative compute (training-step equivalents: training steps + sweep forward samples / '
                      '(3 × batch size))')
        ax.set_ylabel('test accuracy (%)')
        ratio = self.compute.get('ratio')
        ax.set_title('Figure 4: accuracy against compute spent' +
                     (f' (adaptive / fixed to reach X: {ratio:.2f})' if ratio is not None else ''))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc='lower left')
        return self.save(fig, 'fig4_accuracy_vs_compute.png', 120)

    def plot_landscape(self) -> Optional[str]:
        """Test error per level with the matching threshold, and successive barriers against ε (fixed and τ = 0)."""
        land = self.landscape
        if not land:
            return None
        fig, (ax_e, ax_b) = subplots(1, 2, figsize=(14, 4.8))
        dense, tol = land['dense_error']['mean'], land['tolerance']
        levels = land['levels']
        ax_e.errorbar([100 * lv['weights_remaining']['mean'] for lv in levels], [100 * lv['error']['mean'] for lv in levels],
                      yerr=[100 * lv['error']['std'] for lv in levels], marker='o', capsize=3, color='tab:blue',
                      label='fixed 20% (mean ± std over seeds)')
        if land.get('tau0'):
            t0 = land['tau0']['levels']
            ax_e.plot([100 * lv['weights_remaining'] for lv in t0], [100 * lv['error'] for lv in t0], marker='s',
                      color='tab:red', label='τ = 0 (one seed; its table judges it by its own dense error)')
        ax_e.axhline(100 * (dense + tol), color='black', ls=':', label=f'matching threshold (dense + ε = {100 * tol:.2f} pts)')
        percent_log_axis(ax_e)
        ax_e.set_xlabel('weights remaining (%, log scale)')
        ax_e.set_ylabel(f'test error (%, {land["test_examples"]} test examples)')
        ax_e.set_title('Test error per IMP level (analysis evaluator)')
        ax_e.grid(alpha=0.3, which='both')
        ax_e.legend(fontsize=8)
        succ = land['successive']
        xs = [s['from'] for s in succ]
        ax_b.bar([x - 0.2 for x in xs], [100 * s['barrier']['mean'] for s in succ],
                 yerr=[100 * s['barrier']['std'] for s in succ], width=0.4, capsize=2,
                 color=['tab:green' if s['connected'] else 'tab:gray' for s in succ], edgecolor='tab:blue',
                 label='fixed 20%: barrier L → L+1 (green: connected)')
        for s in succ:
            if not s['both_matching']:
                ax_b.plot([s['from'] - 0.2], [100 * s['barrier']['mean'] + 100 * s['barrier']['std'] + 0.05], marker='v',
                          color='black', ms=4, ls='')
        ax_b.plot([], [], marker='v', color='black', ls='', label='pair with a non-matching level')
        if land.get('tau0'):
            t0 = land['tau0']['successive']
            ax_b.bar([s['from'] + 0.2 for s in t0], [100 * s['barrier'] for s in t0], width=0.4, color='tab:red',
                     alpha=0.7, label='τ = 0: barrier L → L+1')
        ax_b.axhline(100 * tol, color='black', ls=':', label=f'ε = {100 * tol:.2f} pts (connected below)')
        ax_b.set_xticks(xs)
        ax_b.set_xlabel('level L (path from w_L to w_L+1)')
        ax_b.set_ylabel('error barrier (percentage points)')
        ax_b.set_title('Error barriers between successive levels')
        ax_b.grid(alpha=0.3, axis='y')
        ax_b.legend(fontsize=8)
        return self.save(fig, 'landscape_barriers.png', 120)

    def plot_paths(self) -> Optional[str]:
        """Figure 2 (left): the error along every successive path, mean ± std over seeds; τ = 0 beside it."""
        land = self.landscape
        if not land:
            return None
        fig, ax = subplots(figsize=(11, 4.5))
        dense, tol = land['dense_error']['mean'], land['tolerance']
        draw_successive_paths(ax, land['successive'], not_connected='tab:purple')
        for s in (land.get('tau0') or {}).get('successive', []):
            x = [s['from'] + b * (s['to'] - s['from']) for b in s['betas']]
            ax.plot(x, [100 * e for e in s['errors']], color='tab:red', ls='--', lw=1)
        ax.axhline(100 * (dense + tol), color='black', ls=':', label='matching threshold (dense + ε)')
        ax.plot([], [], color='tab:green', label='fixed 20%: connected (mean barrier ≤ ε)')
        ax.plot([], [], color='tab:purple', label='fixed 20%: not connected')
        if land.get('tau0'):
            ax.plot([], [], color='tab:red', ls='--', label='τ = 0 run')
        ax.set_xlabel('level (linear path from w_L to w_L+1)')
        ax.set_ylabel(f'test error (%, {land["test_examples"]} test examples)')
        ax.set_title('Figure 2: error along the linear paths between successive IMP solutions (mean ± std)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return self.save(fig, 'successive_paths.png', 120)

    def plot_pairwise(self) -> Optional[str]:
        """Appendix C's heatmap: the maximum error along the path between two levels, darkest at the threshold."""
        land = self.landscape
        if not land or not land.get('pairwise'):
            return None
        pw = land['pairwise']
        threshold = land['dense_error']['mean'] + land['tolerance']
        fig, (ax_m, ax_b) = subplots(1, 2, figsize=(13, 5.2))
        for ax, key, label, low in ((ax_m, 'max_error', 'max test error on the path (%)', 100 * threshold),
                                    (ax_b, 'barrier', 'error barrier (percentage points)', 0.0)):
            matrix = np.array([[np.nan if v is None else 100 * v for v in row] for row in pw[key]])
            top = float(np.nanmax(matrix)) if np.isfinite(matrix).any() else low + 1
            image = ax.imshow(matrix, cmap='viridis', vmin=low, vmax=max(top, low + 0.1))
            ax.set_xticks(range(len(pw['levels'])), pw['levels'])
            ax.set_yticks(range(len(pw['levels'])), pw['levels'])
            ax.set_xlabel('level')
            ax.set_ylabel('level')
            fig.colorbar(image, ax=ax, label=label)
        ax_m.set_title(f'Max error on the path (darkest: ≤ matching threshold {100 * threshold:.2f}%)', fontsize=10)
        ax_b.set_title(f'Error barrier (connected: ≤ ε = {100 * land["tolerance"]:.2f} pts)', fontsize=10)
        fig.suptitle(f'Linear paths between levels {", ".join(map(str, pw["levels"]))} '
                     f'(mean over {len(self.fixed)} seeds, β ∈ {{{", ".join(f"{b:g}" for b in pw["betas"])}}})')
        return self.save(fig, 'pairwise_max_error.png', 120)

    def plot_planes(self) -> Optional[str]:
        """Figure 3: the error on the plane through w_L, its projection and w_L+1, at the two chosen levels."""
        land = self.landscape
        planes = (land or {}).get('planes') or []
        if not planes:
            return None
        # the planes are replicate 0's: its own matching threshold (its dense error + ε)
        threshold = land['dense_error']['values'][0] + land['tolerance']
        fig, axes = subplots(1, len(planes), figsize=(5.6 * len(planes), 6.4), squeeze=False)
        for ax, plane in zip(axes[0], planes):
            fig.colorbar(draw_plane(ax, plane, threshold), ax=ax, label='test error (%)')
            # the level was chosen by the seeds' mean; the plane is replicate 0's
            ax.set_title(f'level {plane["level"]} → {plane["level"] + 1} ({plane["kind"]} in the mean over seeds)',
                         fontsize=10)
        fig.suptitle('Figure 3: error on the plane through w_L, its projection and w_L+1 (replicate 0, coarse grid)')
        return self.save(fig, 'planes.png', 110, tight=True)  # the taller plane's legend

    def plot_controls(self) -> Optional[str]:
        """The ticket against its random-mask and reinit controls at the two sparsities (mean ± std over seeds)."""
        if not self.controls or not self.controls['rows']:
            return None
        levels = self.controls['levels']
        kinds = ['ticket'] + list(self.rep.plan.control_kinds)
        fig, ax = subplots(figsize=(8, 4.8))
        width = 0.8 / len(kinds)
        for k, kind in enumerate(kinds):
            means, stds = [], []
            for level in levels:
                rows = [r for r in self.controls['rows'] if r['level'] == level]
                values = [r['ticket_accuracy'] for r in rows if r['kind'] == self.rep.plan.control_kinds[0]] \
                    if kind == 'ticket' else [r['accuracy'] for r in rows if r['kind'] == kind]
                s = stats(values) if values else {'mean': float('nan'), 'std': 0.0}
                means.append(100 * s['mean'])
                stds.append(100 * s['std'])
            ax.bar([i + (k - (len(kinds) - 1) / 2) * width for i in range(len(levels))], means, width, yerr=stds,
                   capsize=3, label={'ticket': 'IMP ticket', 'random_mask': 'random mask (same per-layer counts)',
                                     'reinit': 'reinitialized, ticket mask', 'shuffle': 'kept weights shuffled'}[kind])
        if self.fixed_table:
            ax.axhline(100 * self.fixed_table['dense']['mean'], color='black', ls=':', label='dense accuracy (mean)')
        wr = {lv['level']: lv['weights_remaining']['mean'] for lv in self.fixed_table['levels']} if self.fixed_table else {}
        ax.set_xticks(range(len(levels)), [f'level {lv}\n({pct(wr.get(lv))} remaining)' for lv in levels])
        low = min(r['accuracy'] for r in self.controls['rows'])
        ax.set_ylim(max(0.0, 100 * low - 5), None)
        ax.set_ylabel('test accuracy (%)')
        ax.set_title('Ticket against controls (retrained from the rewind point)')
        ax.grid(alpha=0.3, axis='y')
        ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.18), ncol=2)
        return self.save(fig, 'controls.png', 120)

    # ---- the page --------------------------------------------------------------------------------------------
    def write(self) -> str:
        """Draw every figure whose data exists and write the results page; returns its path."""
        figures = {name: draw() for name, draw in (
            ('sparsity', self.plot_sparsity), ('compute', self.plot_compute), ('landscape', self.plot_landscape),
            ('paths', self.plot_paths), ('pairwise', self.plot_pairwise), ('planes', self.plot_planes),
            ('controls', self.plot_controls), ('rewinding', self.plot_rewinding))}
        lines = self.page(figures)
        os.makedirs(os.path.dirname(self.rep.results), exist_ok=True)
        atomic_write_text('\n'.join(lines) + '\n', self.rep.results)
        log.info('results written to %s (figures in %s)', self.rep.results, self.figures)
        return self.rep.results

    def page(self, figures: dict) -> list[str]:
        """The markdown lines of the results page."""
        rep, cfg, plan = self.rep, self.rep.cfg, self.rep.plan
        book = rep.book
        missing = '*Not run yet.*'
        imp = imp_kwargs(cfg)
        extra = [o for o in rep.overrides if o not in COMMON_OVERRIDES]
        with_extra = ' with ' + ', '.join(f'`{o}`' for o in extra) if extra else ''
        lines = [f'# Reproducing the paper\'s claims: {rep.recipe_name}{" (smoke)" if rep.args.smoke else ""}', '',
                 f'Written by `benchmarks/reproduce.py` on {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")} from the '
                 f'outputs in `{os.path.relpath(rep.out, ROOT) if rep.out.startswith(ROOT) else rep.out}`; every '
                 'number and verdict below is computed from them (re-run the command to refresh this page).', '',
                 '## Verdicts', '', *self.verdicts(), '',
                 '## The command', '', '```bash', self.command(), '```', '',
                 'Interrupt it at any point and run it again: finished levels, analysis evaluations and controls are '
                 'kept and skipped (see *Resumption* below). `--stages fixed,adaptive` runs a subset.', '',
                 '## The task and the recipe', '',
                 f'`{RECIPES[rep.recipe_name]}`{with_extra}: '
                 f'model `{cfg.model.name}` ({self.prunable()} prunable weights), data `{cfg.data.name}` '
                 f'(training subset {cfg.data.get("train_subset") or "all"}, batch {cfg.data.batch_size}), '
                 f'{cfg.optimizer.name} lr {cfg.optimizer.get("lr")} momentum {cfg.optimizer.get("momentum")} weight decay '
                 f'{cfg.optimizer.get("weight_decay")}, scheduler {(cfg.scheduler or {}).get("name")}, {cfg.max_duration} '
                 f'per level, rewind τ = {imp.get("rewind")}, pruning ratio {imp.get("ratio")} of the remaining weights per '
                 f'level (global magnitude), level cap {cfg.levels}, target sparsity {cfg.target_sparsity}. '
                 f'{plan.seeds} seeds ({cfg.seed} … {cfg.seed + plan.seeds - 1}) for the fixed and adaptive runs.', '']
        lines += self.section_dense(figures)
        lines += ['## Claim 1: connected iff matching (fixed-ratio IMP, τ > 0)', '']
        lines += self.section_landscape(figures) if self.landscape else [missing, '']
        lines += ['## The contrast: rewinding to τ = 0', '']
        lines += self.section_tau0() if self.tau0 else [missing, '']
        lines += ['## Rewinding: a fresh optimizer and a new data order per level, or the pretraining\'s replayed', '']
        lines += self.section_rewinding(figures) if self.rewinding and self.fixed else [missing, '']
        lines += ['## Controls', '']
        lines += self.section_controls(figures) if self.controls else [missing, '']
        lines += ['## Claim 2: AdaptiveIMP reaches matching sparsity with less compute', '']
        lines += self.section_compute(figures) if self.compute and self.compute.get('tables') else [missing, '']
        lines += self.section_budget(book)
        lines += self.section_economies()
        lines += ['## Resumption', '',
                  '* `fixed`, `adaptive`: `find_ticket` skips every finished level (checksummed files) and the loop '
                  'extends the run one level at a time (a re-run with more `levels` extends a finished run); the '
                  'stopping rule is recomputed from the finished levels, so a resumed run stops where an uninterrupted '
                  'one would.',
                  '* `tau0`, `oneshot`: the same, with a fixed number of levels.',
                  '* `landscape`: the replicate analysis caches every evaluation in `fixed/*/analysis/cache/` keyed by '
                  'the weights\' SHA-256; the heatmap paths and the planes are cached in `landscape/` the same way.',
                  '* `controls`: each finished control is `level_XX/controls/KIND.json` and is not retrained.',
                  '* Each stage that finished is marked in `stages.json` with a hash of the recipe and the plan; it is '
                  'skipped on a re-run with the same settings, redone (resuming) otherwise. `compute` and `report` are '
                  'recomputed every time (seconds).', '']
        return lines

    def command(self) -> str:
        """The command line that makes these results."""
        args = ['python', 'benchmarks/reproduce.py', '--out', os.path.relpath(self.rep.out, ROOT)
                if self.rep.out.startswith(ROOT) else self.rep.out]
        a = self.rep.args
        if a.recipe != 'fmnist':
            args += ['--recipe', a.recipe]
        if a.data_root:
            args += ['--data-root', a.data_root]
        if a.smoke:
            args.append('--smoke')
        if a.synthetic_data:
            args.append('--synthetic-data')
        for flag, value in (('--seeds', a.seeds), ('--test-subsample', a.test_subsample),
                            ('--pairwise-stride', a.pairwise_stride)):
            if value is not None:
                args += [flag, str(value)]
        return shlex.join(args + list(a.overrides))

    def prunable(self) -> str:
        """The number of prunable weights (conv and linear weights) of the recipe's model, as text."""
        spec = OmegaConf.to_container(self.rep.cfg.model, resolve=True)
        model = build_model(spec.pop('name'), **spec)
        return f'{sum(p.numel() for p in prunable_parameters(model).values()):,}'

    def verdicts(self) -> list[str]:
        """Plain statements computed from the numbers: where the results agree with the paper and where not."""
        out = []
        t = self.fixed_table
        if t:
            d = t['dense']
            out.append(f'* **Task.** The dense network reaches {pm(d)}% test accuracy over {len(d["values"])} seeds '
                       f'(ε = {100 * t["epsilon"]:.2f} points): {"at least" if d["mean"] >= 0.90 else "below"} the 90% '
                       'the reproduction asks for.')
        if self.oneshot and t:
            # each against its own dense network (its level 0, the same seed as replicate 0)
            drops = [(run['rows'][-1]['weights_remaining'], run['rows'][0]['accuracy'] - run['rows'][-1]['accuracy'])
                     for run in self.oneshot['runs']]
            costly = [w for w, drop in drops if drop > t['epsilon']]
            cost = (f'it costs accuracy beyond ε at {", ".join(pct(w, 1) for w in costly)}' if costly
                    else 'it does not cost accuracy beyond ε at these sparsities')
            out.append('* **One-shot pruning** of the dense solution, retrained from τ, against that dense network: '
                       + ', '.join(
                f'{pct(w, 1)} remaining loses {100 * drop:.2f} points' for w, drop in drops) + f'; {cost}.')
        land = self.landscape
        if land:
            v = land['verdict']
            pairs = v['pairs']
            agree = sum(p['agree'] for p in pairs)
            hard = [p for p in pairs if not p['matching']]
            status = {True: 'holds', False: 'does not hold', None: 'cannot be judged (no pair of pruned levels)'}[v['holds']]
            easy = [p for p in pairs if p['matching']]
            barriers = [s['barrier']['mean'] for s in land['successive'] if s['from'] >= 1]
            sparsest = land['levels'][-1]
            out.append(f'* **Claim 1 (connected iff matching)** {status} for fixed-20% IMP: {agree} of {len(pairs)} '
                       f'successive pairs of pruned levels agree (connected exactly when both are matching; ε = '
                       f'{100 * land["tolerance"]:.2f} points on {land["test_examples"]} test examples). '
                       f'Matching ⇒ connected: {sum(p["connected"] for p in easy)} of {len(easy)} pairs of matching '
                       f'levels are connected. Not matching ⇒ not connected: {len(hard)} pairs involve a non-matching '
                       f'level, so the claim {"is" if hard else "was not"} tested where it can fail'
                       + (f', and {sum(not p["connected"] for p in hard)} of them are not connected.' if hard else '.')
                       + (f' The largest mean barrier between successive pruned levels is {100 * max(barriers):.2f} '
                          f'points, while the sparsest level ({pct(sparsest["weights_remaining"]["mean"])} remaining) '
                          f'errs {100 * (sparsest["error"]["mean"] - land["dense_error"]["mean"]):.2f} points more than '
                          'dense' if barriers else '')
                       + (': the error drifts up over the pruned levels, at some steps by more than ε, yet no '
                          'barrier appears — a barrier (Definition A.1) is measured above the line between the two '
                          'endpoints\' errors, so a loss of accuracy from one level to the next is not one. '
                          'Connectivity does not signal the loss of matching here (in the paper\'s Figure 2, '
                          'non-matching levels, rewound to step 0 or too early, are separated by barriers).'
                          if hard and all(p['connected'] for p in hard) else ('.' if barriers else '')))
            if land.get('tau0'):
                t0 = land['tau0']
                own = {lv['level']: lv['matching'] for lv in land['levels']}
                matching = [lv['level'] for lv in t0['levels'][1:] if lv['matching']]
                connected = [s for s in t0['successive'] if s['from'] >= 1 and s['connected']]
                total = len([s for s in t0['successive'] if s['from'] >= 1])
                # like for like: replicate 0 (the same seed) judged by the same one-seed rule as the τ = 0 run
                same_seed = [lv['level'] for lv in self.replicate0_levels[1:] if lv['matching']]
                deepest = {'τ = 0': max(matching, default=0), 'τ > 0': max(same_seed, default=0),
                           'mean': max((lv for lv, m in own.items() if m and lv >= 1), default=0)}
                # The paper (Fig. 2, 5; App. D): rewound to 0, IMP stops matching at a lower sparsity than from τ > 0
                # (level 1 at 80% may still match), and its sparse levels are not connected.
                agrees = deepest['τ = 0'] < deepest['τ > 0'] and len(connected) < total
                last = min(len(t0['levels']), len(land['levels'])) - 1
                err0, err = t0['levels'][last]['error'], land['levels'][last]['error']
                out.append(f'* **τ = 0 contrast** (the paper: rewound to step 0, IMP stops matching earlier and its '
                           f'sparse levels are not connected): levels {matching or "none"} of {len(t0["levels"]) - 1} '
                           f'match against its own dense network (deepest {deepest["τ = 0"]}; from τ > 0 the same seed, '
                           f'judged the same way, matches to level {deepest["τ > 0"]}, the mean of the seeds to level '
                           f'{deepest["mean"]}), and '
                           f'{len(connected)} of {total} successive pairs of pruned levels are connected; at level '
                           f'{last} it errs {pct(err0)} against {pm(err)}% from τ > 0: '
                           f'{"agrees with" if agrees else "differs from"} the paper'
                           + ('.' if agrees else ' (a likely reason: on LeNet-scale networks the original lottery '
                              'ticket paper, Frankle & Carbin 2019, found tickets at initialization; the paper\'s '
                              'contrast is on ResNets, where rewinding to step 0 fails).')
                           + ''.join(f' Dense → level 1: barrier {100 * s["barrier"]:.2f} points, '
                                     f'{"connected" if s["connected"] else "not connected"} (from τ > 0: '
                                     f'{pm(d["barrier"])}).'
                                     for s in t0['successive'][:1] for d in land['successive'][:1] if s['from'] == 0))
        if self.controls and self.controls['rows'] and t:
            parts = []
            for level in self.controls['levels']:
                rows = [r for r in self.controls['rows'] if r['level'] == level]
                ticket = statistics.fmean(r['ticket_accuracy'] for r in rows if r['kind'] == rows[0]['kind'])
                for kind in self.rep.plan.control_kinds:
                    values = [r['accuracy'] for r in rows if r['kind'] == kind]
                    if values:
                        parts.append((level, kind, ticket - statistics.fmean(values)))
            beat = all(gap > t['epsilon'] for _, _, gap in parts)
            gaps = ', '.join(f'{"beats" if gap >= 0 else "trails"} {kind} at level {level} by {100 * abs(gap):.2f} '
                             'points' for level, kind, gap in parts)
            out.append(f'* **Controls**: the ticket {gaps} ('
                       + ('every gap above ε: the mask and the rewound weights both matter).' if beat
                          else 'not every gap is above ε).'))
        c = self.compute
        if c and c.get('ratio') is not None:
            ratio = c['ratio']
            reach = c['reach']
            out.append(f'* **Claim 2 (AdaptiveIMP)**: both methods stay matching down to X = {pct(c["X"])} weights '
                       f'remaining (sparsest matching: fixed {pct(c["sparsest_matching"]["fixed"])}, adaptive '
                       f'{pct(c["sparsest_matching"]["adaptive"])}). To first reach ≤ X, AdaptiveIMP spends '
                       f'{ratio:.2f}× the compute of fixed-20% IMP (sweeps included; {reach["adaptive"]["level"]} '
                       f'against {reach["fixed"]["level"]} levels): '
                       + (f'a {100 * (1 - ratio):.0f}% saving, ' if ratio < 1 else f'{100 * (ratio - 1):.0f}% more, ')
                       + f'against the paper\'s ≈ {100 * PAPER_COMPUTE_SAVING:.0f}% saving (Figure 4: 7 retrainings '
                       'instead of 11) '
                       + (f'(agrees in direction; the sizes are not comparable: here X is reached after '
                          f'{reach["fixed"]["level"]} fixed-ratio levels, in the paper after 11).'
                          if ratio < 1 else '(does not agree).'))
        elif c:
            out.append('* **Claim 2 (AdaptiveIMP)**: no weights-remaining level is matching in the mean for both '
                       'methods, so the compute ratio is undefined.')
        return out or ['*No stage has finished yet: this page is the skeleton the command fills in. Run the command '
                       'below.*']

    def section_dense(self, figures: dict) -> list[str]:
        """Dense accuracy, the fixed-IMP levels, and one-shot pruning beside them."""
        lines = ['## Dense network, IMP levels and one-shot pruning', '']
        t = self.fixed_table
        if not t:
            return lines + ['*Not run yet.*', '']
        stage = self.fixed_stage or {}
        lines += [f'Dense test accuracy per seed: {", ".join(pct(v) for v in t["dense"]["values"])} (mean {pm(t["dense"])}%); '
                  f'ε = {100 * t["epsilon"]:.2f} points (std across seeds). A level **matches** when its mean accuracy '
                  f'is ≥ {pct(t["threshold"])} (mean dense − ε). The fixed run stopped: {stage.get("stop", "still running")}.',
                  '', '| level | weights remaining | accuracy (mean ± std, %) | matching | one-shot at this sparsity |',
                  '|---|---|---|---|---|']
        oneshot = {run['remaining_target']: (run['rows'][-1], run['rows'][0]['accuracy'])
                   for run in (self.oneshot or {}).get('runs', [])}
        for lv in t['levels']:
            lines.append(f'| {lv["level"]} | {pct(lv["weights_remaining"]["mean"])} | {pm(lv["accuracy"])} | '
                         f'{"yes" if lv["matching"] else "**no**"} | |')
        for remaining, (row, dense) in sorted(oneshot.items(), reverse=True):
            lines.append(f'| one-shot | {pct(row["weights_remaining"])} | {pct(row["accuracy"])} (seed {self.rep.cfg.seed}) | '
                         f'{"yes" if is_matching(1 - row["accuracy"], 1 - dense, t["epsilon"]) else "**no**"} | pruned '
                         f'{100 * (1 - remaining):g}% at once; {100 * (dense - row["accuracy"]):.2f} pts under its dense '
                         f'network ({pct(dense)}) |')
        if self.oneshot:
            fixed_hash = self.fixed[0][0].get('manifest', {}).get('weights.pt')
            same = [run['rows'][0].get('manifest', {}).get('weights.pt') == fixed_hash for run in self.oneshot['runs']]
            lines += ['', 'One-shot runs: an IMP run with a single pruned level whose ratio leaves the target fraction, '
                      'judged against its own dense network (matching: within ε of it), '
                      'same seed and data order as replicate 0 of the fixed run (the public `find_ticket` API; its level 0 '
                      'retrains the dense network). Its dense solution is '
                      + ('bit-identical to the fixed run\'s replicate 0 (same weights hash).' if all(same) else
                         f'bit-identical to the fixed run\'s replicate 0 in {sum(same)} of {len(same)} one-shot runs '
                         '(same recipe, seed and data order; a differing hash means the dense retraining was not '
                         'bitwise reproducible).')]
        if figures.get('sparsity'):
            lines += ['', self.link(figures['sparsity'], 'accuracy vs weights remaining'), '']
        return lines

    def section_landscape(self, figures: dict) -> list[str]:
        """The replicate analysis: per-level matching, barriers, the verdict table, heatmap and planes."""
        land = self.landscape
        lines = [f'Analysis evaluator: {self.evaluated()}, BatchNorm statistics '
                 f'interpolated, β ∈ {{{", ".join(f"{b:g}" for b in land["betas"])}}} on every path. '
                 f'ε = {100 * land["epsilon"]:.2f} points (std of the dense test error across seeds, this evaluator); '
                 f'a level matches when its mean error ≤ mean dense error + ε, a pair is connected when its mean '
                 'barrier ≤ ε.', '',
                 '| level | weights remaining | test error (mean ± std, %) | matching | barrier to next (pts) | connected | '
                 'matching in # seeds | w_L+1 in LCS-set of w_L (test), # seeds | projection in LCS-set: test / train, '
                 '# seeds |', '|---|---|---|---|---|---|---|---|---|']
        succ = {s['from']: s for s in land['successive']}
        n = len(self.fixed) or 1
        for lv in land['levels']:
            s = succ.get(lv['level'])
            rows = [seed[lv['level']] for seed in self.lcs if lv['level'] in seed]
            lcs = (f'{sum(r["next"]["test"] for r in rows)}/{len(rows)} | {sum(r["projection"]["test"] for r in rows)}/'
                   f'{len(rows)} / {sum(bool(r["projection"].get("train")) for r in rows)}/{len(rows)}' if rows else '– | –')
            lines.append(f'| {lv["level"]} | {pct(lv["weights_remaining"]["mean"])} | {pm(lv["error"])} | '
                         f'{"yes" if lv["matching"] else "**no**"} | {pm(s["barrier"]) if s else "–"} | '
                         f'{("yes" if s["connected"] else "**no**") if s else "–"} | {round(lv["matching_fraction"] * n)}/{n} | '
                         f'{lcs} |')
        lines += ['', 'Last two columns (Definition 2.1, §2.1–2.2): is the next solution w_L+1, and the projection '
                  'm_L+1 ⊙ w_L of level L\'s solution onto the next mask, in the ε-LCS-set of w_L, i.e. is its error and '
                  'every error on the line from w_L to it within E(w_L) + ε (the paper, §2.1: from a matching w_L, w_L+1 is in '
                  'it exactly when level L + 1 matches) — for test error with the replicates\' ε, and for training loss (a fixed 1024-example '
                  'training subsample, the same evaluator) with ε = the std of the dense run\'s per-batch training loss '
                  'over its last epoch, above w_L\'s own training loss (AdaptiveIMP\'s sweep '
                  'measures above the dense network\'s instead; only the projection is judged in training loss here). '
                  'Counted over seeds.']
        v = land['verdict']
        lines += ['', f'**Connected iff matching**, successive pairs of pruned levels (L ≥ 1): '
                  f'**{ {True: "holds", False: "does not hold", None: "not judged"}[v["holds"]] }**.', '',
                  '| pair | both matching | connected | agree |', '|---|---|---|---|']
        lines += [f'| {p["from"]} → {p["to"]} | {p["matching"]} | {p["connected"]} | {"yes" if p["agree"] else "**no**"} |'
                  for p in v['pairs']]
        dense = v.get('dense_pair')
        if dense:
            lines += ['', f'Dense → level 1 (judged apart, as in the paper): both matching {dense["matching"]}, '
                      f'connected {dense["connected"]}.']
        lines += ['', 'How the verdict depends on the tolerance (the paper\'s ε is the first row; the others judge the '
                  'same measured errors and barriers with a looser tolerance, for matching and connected alike):', '',
                  '| tolerance (pts) | sparsest matching level | pairs L ≥ 1 connected | pairs L ≥ 1 agreeing | '
                  'connected iff matching |', '|---|---|---|---|---|']
        for tol, label in tolerances(land['tolerance']):
            t = verdict_at(land, tol)
            pairs = t['verdict']['pairs']
            lines.append(f'| {label} | {t["sparsest"]} | {sum(p["connected"] for p in pairs)} of {len(pairs)} | '
                         f'{sum(p["agree"] for p in pairs)} of {len(pairs)} | '
                         f'{ {True: "holds", False: "does not hold", None: "–"}[t["verdict"]["holds"]] } |')
        lines += ['']
        for key, alt in (('landscape', 'error and barriers'), ('paths', 'successive paths'),
                         ('pairwise', 'pairwise max error'), ('planes', 'planes')):
            if figures.get(key):
                lines += [self.link(figures[key], alt), '']
        if land.get('planes'):
            lines += [f'Planes (replicate 0, its matching error {pct(land["dense_error"]["values"][0] + land["tolerance"])} '
                      'drawn dotted; the levels chosen by the mean over seeds): ' + '; '.join(
                f'level {p["level"]} → {p["level"] + 1} ({p["kind"]} in the mean): w_L {pct(p["anchors"]["w_L"]["error"])}, projection '
                f'{pct(p["anchors"]["projection"]["error"])}, w_L+1 {pct(p["anchors"]["next"]["error"])} error'
                for p in land['planes']) + f'; grid {self.rep.plan.plane_grid} × {self.rep.plan.plane_grid}.', '']
        return lines

    def evaluated(self) -> str:
        """What the landscape analysis evaluates on, in words."""
        n = (self.landscape or {}).get('test_examples')
        return (f'the whole test set ({n} examples)' if self.rep.plan.test_subsample is None
                else f'a fixed subsample of {n} test examples')

    def section_tau0(self) -> list[str]:
        """The τ = 0 run: accuracy per level and (when analysed) matching and connectivity."""
        rows = self.tau0
        t0 = (self.landscape or {}).get('tau0')
        lines = [f'Fixed-20% IMP rewound to step 0 (seed {self.rep.cfg.seed}, {len(rows) - 1} pruned levels). '
                 f'Matching and connected judged with the fixed run\'s ε on {self.evaluated()}.', '',
                 '| level | weights remaining | accuracy (full test set) | analysis error | matching | barrier to next (pts) | '
                 'connected | τ > 0: error, 3 seeds (%) |', '|---|---|---|---|---|---|---|---|']
        succ = {s['from']: s for s in (t0 or {}).get('successive', [])}
        analysed = {lv['level']: lv for lv in (t0 or {}).get('levels', [])}
        rewound = {lv['level']: lv for lv in (self.landscape or {}).get('levels', [])}
        for r in rows:
            a, s, b = analysed.get(r['level']), succ.get(r['level']), rewound.get(r['level'])
            barrier = f'{100 * s["barrier"]:.2f}' if s else '–'
            lines.append(f'| {r["level"]} | {pct(r["weights_remaining"])} | {pct(r["accuracy"])} | '
                         f'{pct(a["error"]) if a else "–"} | {("yes" if a["matching"] else "**no**") if a else "–"} | '
                         f'{barrier} | {("yes" if s["connected"] else "**no**") if s else "–"} | '
                         f'{pm(b["error"]) if b else "–"} |')
        return lines + ['', 'Matching here is judged against this run\'s own dense level (one seed) with the replicates\' '
                        'ε; the last column is the τ > 0 run\'s error at the same level over its seeds, for comparison.',
                        '']

    def rewinding_pairs(self) -> list[dict]:
        """Per level: the default rewinding (replicate 0 of ``fixed``) beside the replayed one (``rewinding``)."""
        land = self.landscape or {}
        default = {s['from']: s['barrier']['values'][0] for s in land.get('successive', [])}
        replay = {s['from']: s['barrier'] for s in (land.get('rewinding') or {}).get('successive', [])}
        fixed0 = {r['level']: r for r in self.fixed[0]}
        return [{'level': r['level'], 'weights_remaining': r['weights_remaining'],
                 'default': fixed0[r['level']]['accuracy'] if r['level'] in fixed0 else None, 'replay': r['accuracy'],
                 'barrier_default': default.get(r['level']), 'barrier_replay': replay.get(r['level'])}
                for r in self.rewinding]

    def plot_rewinding(self) -> Optional[str]:
        """Accuracy per level and the barrier to the next level, for both ways of rewinding (one seed)."""
        if not self.rewinding or not self.fixed:
            return None
        pairs = self.rewinding_pairs()
        fig, axes = subplots(1, 2, figsize=(14, 5))
        x = [100 * p['weights_remaining'] for p in pairs]
        for key, label, color in (('default', 'fresh optimizer, new data order per level (default, OpenLTH)', 'tab:blue'),
                                  ('replay', 'momentum at τ restored, pretraining data order replayed', 'tab:red')):
            axes[0].plot(x, [100 * p[key] if p[key] is not None else np.nan for p in pairs], marker='o',
                         color=color, label=label)
            axes[1].plot(x, [100 * p[f'barrier_{key}'] if p[f'barrier_{key}'] is not None else np.nan for p in pairs],
                         marker='o', color=color, label=label)
        tol = ((self.landscape or {}).get('rewinding') or {}).get('tolerance')
        if tol is not None:
            axes[1].axhline(100 * tol, color='grey', ls='--', label=f'ε = {100 * tol:.2f} pts (connected below)')
        for ax in axes:
            percent_log_axis(ax)
            ax.set_xlabel('weights remaining (%)')
            ax.grid(alpha=0.3)
        axes[0].set_ylabel('test accuracy (%)')
        axes[0].set_title(f'Accuracy per level, seed {self.rep.cfg.seed}')
        axes[1].set_ylabel('error barrier from level L to L + 1 (pts)')
        axes[1].set_title('Barrier between successive levels (at level L)')
        axes[0].legend(fontsize=8, loc='lower left')
        axes[1].legend(fontsize=8, loc='upper left')
        return self.save(fig, 'rewinding.png', 110)

    def section_rewinding(self, figures: dict) -> list[str]:
        """The two ways of rewinding side by side (the fidelity issue's item 7)."""
        pairs = self.rewinding_pairs()
        lines = [f'Seed {self.rep.cfg.seed}: replicate 0 of the fixed run (every level starts from w_τ at step τ with a '
                 'fresh optimizer and its own data order, as OpenLTH does; the default) beside the same recipe with '
                 '`IMP(rewind_optimizer=True, data_order=\'replay\')` (every level restores the momentum at τ and replays '
                 'the pretraining\'s data order and RNG, so levels share their SGD noise). Both share the pretraining, so '
                 'the same w_τ; their dense networks differ (replayed, level 0 continues the pretraining exactly), so '
                 f'their masks differ from level 1 on. Barriers on {self.evaluated()}, as in the landscape analysis.', '',
                 '| level | weights remaining | accuracy, default | accuracy, replay | barrier to next, default (pts) | '
                 'barrier to next, replay (pts) |', '|---|---|---|---|---|---|']
        for p in pairs:
            lines.append(f'| {p["level"]} | {pct(p["weights_remaining"])} | {pct(p["default"])} | {pct(p["replay"])} | '
                         + ' | '.join(f'{100 * p[k]:.2f}' if p[k] is not None else '–'
                                      for k in ('barrier_default', 'barrier_replay')) + ' |')
        both = [p for p in pairs if p['barrier_default'] is not None and p['barrier_replay'] is not None
                and p['level'] >= 1]
        if both:
            mean_d = statistics.fmean(p['barrier_default'] for p in both)
            mean_r = statistics.fmean(p['barrier_replay'] for p in both)
            tol = ((self.landscape or {}).get('rewinding') or {}).get('tolerance')
            above = {k: sum(p[f'barrier_{k}'] > tol for p in both) if tol is not None else None
                     for k in ('default', 'replay')}
            # one seed: a difference under a tenth of ε is no difference
            close = tol is not None and abs(mean_d - mean_r) < 0.1 * tol
            lines += ['', f'Mean barrier between successive pruned levels (L ≥ 1, {len(both)} pairs, one seed): '
                      f'{100 * mean_d:.3f} pts with the default rewinding, {100 * mean_r:.3f} pts replayed'
                      + (f'; pairs above ε = {100 * tol:.2f} pts: {above["default"]} and {above["replay"]}'
                         if tol is not None else '') + ': the replayed levels look '
                      + ('about as connected as' if close else 'more connected than' if mean_r < mean_d else
                         'less connected than')
                      + ' levels trained with their own SGD noise.']
        lines.append('')
        if figures.get('rewinding'):
            lines += [self.link(figures['rewinding'], 'rewinding variants'), '']
        return lines

    def section_controls(self, figures: dict) -> list[str]:
        """Ticket against controls per level and seed."""
        c = self.controls
        lines = [f'At level {c["levels"][0]} (the sparsest level matching in the mean)'
                 + (f' and level {c["levels"][1]} (the sparsest trained)' if len(c['levels']) > 1 else '') +
                 ', each control retrained from the rewind point with the run\'s recipe (same τ and schedule, the '
                 'ticket level\'s data order; reinit: a fresh initialization from another seed under the ticket\'s '
                 'mask; random_mask: the ticket\'s per-layer counts at random positions).',
                 '', '| level | weights remaining | seed | ticket | ' + ' | '.join(self.rep.plan.control_kinds) + ' |',
                 '|---|---|---|---|' + '---|' * len(self.rep.plan.control_kinds)]
        for level in c['levels']:
            for r in sorted({row['replicate'] for row in c['rows']}):
                rows = {row['kind']: row for row in c['rows'] if row['level'] == level and row['replicate'] == r}
                if not rows:
                    continue
                first = next(iter(rows.values()))
                lines.append(f'| {level} | {pct(first["weights_remaining"])} | {r} | {pct(first["ticket_accuracy"])} | '
                             + ' | '.join(pct(rows[k]['accuracy']) if k in rows else '–' for k in self.rep.plan.control_kinds) + ' |')
        lines.append('')
        if figures.get('controls'):
            lines += [self.link(figures['controls'], 'controls'), '']
        return lines

    def section_compute(self, figures: dict) -> list[str]:
        """Fixed against adaptive per level, and the compute to first reach X."""
        c = self.compute
        ta = c['tables']['adaptive']
        lines = [f'AdaptiveIMP with the project\'s defaults ({self.adaptive_settings()}), the same seeds; stopped: '
                 f'{(self.adaptive_stage or {}).get("stop", "still running")}. Compute is in training-step equivalents '
                 '(training steps + the sweeps\' forward samples / (3 × batch)), from each run\'s `cumulative_compute`.', '',
                 '| level | pruning ratio (mean) | weights remaining | accuracy (%) | matching | cumulative compute |',
                 '|---|---|---|---|---|---|']
        for lv in ta['levels']:
            lines.append(f'| {lv["level"]} | {lv["ratio"]["mean"]:.3f} | {pm(lv["weights_remaining"])}% | {pm(lv["accuracy"])} | '
                         f'{"yes" if lv["matching"] else "**no**"} | {lv["cumulative_compute"]["mean"]:.0f} |')
        lines.append('')
        if c.get('X') is not None:
            f, a = c['reach']['fixed'], c['reach']['adaptive']
            lines += [f'X = {pct(c["X"])} weights remaining (the sparser of the two methods\' sparsest matching levels is '
                      'out of reach of the other while matching).', '',
                      '| method | first level with ≤ X remaining | weights remaining | accuracy | matching | cumulative compute | '
                      'training steps |', '|---|---|---|---|---|---|---|']
            for name, r in (('fixed 20%', f), ('AdaptiveIMP', a)):
                lines.append(f'| {name} | {r["level"]} | {pm(r["weights_remaining"])}% | {pm(r["accuracy"])}% | '
                             f'{"yes" if r["matching"] else "**no**"} | {pm(r["cumulative_compute"], 0, 1)} | '
                             f'{pm(r["cumulative_steps"], 0, 1)} |')
            lines += ['', f'Ratio adaptive / fixed: **{c["ratio"]:.2f}** in compute with sweeps '
                      f'(per seed: {", ".join(f"{x:.2f}" for x in c.get("per_seed_ratio", []))}), '
                      f'{c["steps_ratio"]:.2f} in training steps alone; the sweeps are '
                      f'{100 * (c.get("sweep_share") or 0):.1f}% of the adaptive runs\' compute.', '']
        if figures.get('compute'):
            lines += [self.link(figures['compute'], 'Figure 4'), '']
        return lines

    def adaptive_settings(self) -> str:
        """The AdaptiveIMP settings recorded by the adaptive run."""
        reps = [f.root for f in RunFolder(self.rep.path('adaptive')).replicates()]
        if not reps:
            return 'not run'
        return ', '.join(f'{k}={v}' for k, v in RunFolder(reps[0]).recorded_imp().items() if k != 'name')

    def section_budget(self, book: dict) -> list[str]:
        """Wall time per stage, the training and sweep seconds inside, and the machine."""
        stages = book.get('stages', {})
        total = sum(s['seconds'] for name, s in stages.items() if name != 'report')
        lines = ['## Budget and machine', '',
                 '| stage | wall time | share | invocations | done | inside it |', '|---|---|---|---|---|---|']
        inside = {
            'fixed': self.training_seconds(self.fixed), 'adaptive': self.training_seconds(self.adaptive),
            'tau0': self.training_seconds([self.tau0] if self.tau0 else []),
            'rewinding': self.training_seconds([self.rewinding] if self.rewinding else []),
            'oneshot': self.training_seconds([run['rows'] for run in (self.oneshot or {}).get('runs', [])]),
        }
        for stage in STAGES[:-1]:  # the report itself: seconds, and still running while this page is written
            s = stages.get(stage)
            if s is None:
                lines.append(f'| {stage} | – | – | 0 | no | |')
                continue
            lines.append(f'| {stage} | {fmt_seconds(s["seconds"])} | {100 * s["seconds"] / total if total else 0:.0f}% | '
                         f'{s["invocations"]} | {"yes" if s.get("done") else "no"} | {inside.get(stage, "")} |')
        lines.append(f'| **total** | **{fmt_seconds(total)}** | 100% | | | |')
        lines += ['', 'Wall times are summed over invocations (an invocation killed with SIGKILL loses its timing, not '
                  'its finished work). "inside it": the seconds spent in `Trainer.fit` of every level, and in the sweeps.', '']
        seen = book.get('machines') or []
        for m in seen[-1:]:
            lines += [f'Machine: {m["cpu"]}, {m["cores"]} cores ({m["torch_threads"]} torch threads), GPU: {m["gpu"] or "none"}; '
                      f'torch {m["torch"]}, Composer {m["composer"]}, Python {m["python"]}, {m["platform"]}.', '']
        history = book.get('invocations') or []
        if history:
            lines += ['Invocations:', '']
            lines += [f'* {h["started"]}: `{h["command"]}` ({fmt_seconds(h.get("seconds"))})' for h in history[-10:]]
            lines.append('')
        return lines

    @staticmethod
    def training_seconds(runs: Sequence[Sequence[dict]]) -> str:
        """Fit and sweep seconds summed over the rows of ``runs``."""
        rows = [r for rows in runs for r in rows]
        if not rows:
            return ''
        fit = sum(r.get('fit_seconds', 0.0) for r in rows)
        sweep = sum((r.get('sweep') or {}).get('seconds', 0.0) for r in rows)
        per_level = fit / len(rows)
        return (f'{len(rows)} levels, fit {fmt_seconds(fit)} ({per_level:.0f} s per level)'
                + (f', sweeps {fmt_seconds(sweep)}' if sweep else ''))

    def section_economies(self) -> list[str]:
        """The economies this run made against the paper's protocol."""
        plan = self.rep.plan
        land = self.landscape or {}
        lines = ['## Economies and departures from the paper', '',
                 ('* The landscape analysis evaluates the whole test set; accuracies in the level tables are the '
                  'Trainer\'s, also on the whole test set.' if plan.test_subsample is None else
                  f'* Test subsample for the landscape analysis: {land.get("test_examples", plan.test_subsample)} fixed '
                  'test examples (the same for every network); accuracies in the level tables are on the full test set.'),
                 f'* Successive paths with {len(plan.betas)} points; the pairwise heatmap pairs '
                 f'{"every level" if plan.pairwise_stride == 1 else f"every {ordinal(plan.pairwise_stride)} level"} '
                 f'(0, {plan.pairwise_stride}, {2 * plan.pairwise_stride}, ...) with {len(plan.pairwise_betas)} points '
                 'per path.',
                 f'* 2-D slices only at two levels (one matching, one not), {plan.plane_grid} × {plan.plane_grid} grid; the '
                 'three networks (w_L, projection, w_L+1) are evaluated exactly.',
                 ('* The fixed and adaptive runs stop two levels after matching ends (or at the target sparsity).'
                  if plan.stop_when_not_matching else
                  '* The fixed and adaptive runs go on past the end of matching, to the target sparsity (about 1% '
                  'remaining), so that Claim 1 is tested where it can fail.'),
                 f'* {plan.seeds} seeds (the paper: 4 runs for the heatmap); controls on '
                 f'{min(plan.control_replicates, plan.seeds)} seed(s); τ = 0 and one-shot on one seed.']
        if self.rep.recipe_name == 'fmnist':
            lines += ['* Task: Fashion-MNIST (a 20k-image training subset) with a LeNet-style CNN on a 2-core CPU, not '
                      'the paper\'s CIFAR-10 ResNet-20 / CIFAR-100 ResNet-18 / ImageNet ResNet-50: the paper\'s claims '
                      'are tested on a smaller problem. `--recipe cifar10_resnet20 --data-root PATH` runs the same stages '
                      'on the paper\'s CIFAR-10 recipe (GPU; see benchmarks/README.md for its estimated cost).']
        return lines + ['']


def tolerances(epsilon: float) -> list[tuple[float, str]]:
    """The paper's ε, then 2ε, 0.5 and 1 point: how far the Claim 1 verdict rests on the choice of tolerance."""
    out = [(epsilon, f'ε = {100 * epsilon:.2f}'), (2 * epsilon, f'2ε = {200 * epsilon:.2f}')]
    out += [(t, f'{100 * t:g}') for t in (0.005, 0.01) if t > 2 * epsilon]
    return out


def verdict_at(land: dict, tolerance: float) -> dict:
    """The replicate analysis re-judged with ``tolerance``: mean error ≤ mean dense error + tolerance (matching),
    mean barrier ≤ tolerance (connected); the sparsest matching level and :func:`iff_verdict` over the same pairs."""
    dense = land['dense_error']['mean']
    matching = {lv['level']: is_matching(lv['error']['mean'], dense, tolerance) for lv in land['levels']}
    successive = [{'from': s['from'], 'to': s['to'], 'connected': is_connected(s['barrier']['mean'], tolerance),
                   'both_matching': matching[s['from']] and matching[s['to']]} for s in land['successive']]
    return {'sparsest': max(level for level, m in matching.items() if m), 'verdict': iff_verdict(successive)}


def percent_log_axis(ax: Any) -> None:
    """A logarithmic, inverted weights-remaining axis with plain percentage ticks (100, 50, 20, 10, 5, 2, 1, ...)."""
    ax.set_xscale('log')
    ax.invert_xaxis()
    ticks = [100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1]
    low, high = sorted(ax.get_xlim())
    inside = [t for t in ticks if low <= t <= high]
    if len(inside) >= 3:
        ax.set_xticks(inside, [f'{t:g}' for t in inside])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:  # a narrow range: label the default ticks plainly
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter('%g'))


def ordinal(n: int) -> str:
    """``2`` → ``2nd``."""
    suffix = 'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')
    return f'{n}{suffix}'


def fmt_seconds(seconds: Optional[float]) -> str:
    """Seconds as ``1 h 02 min``, ``3 min 05 s`` or ``12 s``."""
    if seconds is None:
        return '–'
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'
    if seconds >= 60:
        return f'{seconds // 60} min {seconds % 60:02d} s'
    return f'{seconds} s'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='runs/reproduce', help='folder of every stage\'s outputs (resumed if it exists)')
    parser.add_argument('--recipe', choices=sorted(RECIPES), default='fmnist',
                        help='fmnist (CPU, the default), cifar10_resnet20 (the paper\'s CIFAR-10 recipe, a GPU), digits')
    parser.add_argument('--data-root', help='data.data_root of the recipe (the folder holding cifar-10-batches-py/)')
    parser.add_argument('--stages', default=','.join(STAGES),
                        help=f'comma-separated subset of {",".join(STAGES)} (report always runs last)')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny version: 2 levels, short training, 2 seeds, few analysis points (plumbing checks)')
    parser.add_argument('--synthetic-data', action='store_true',
                        help='with --recipe cifar10_resnet20 --smoke: write random CIFAR-format files under OUT and use them')
    parser.add_argument('--seeds', type=int, help='replicates of the fixed and adaptive runs (default 3; smoke 2)')
    parser.add_argument('--test-subsample', type=int, help='test examples of the landscape analysis (0: all)')
    parser.add_argument('--pairwise-stride', type=int, help='the heatmap pairs every N-th level (default 2)')
    parser.add_argument('--results', help='the results page (default docs/results.md for the full fmnist run, '
                                          'else OUT/results.md); figures go to the folder of the same name')
    parser.add_argument('overrides', nargs='*', help='dotted key=value overrides of the recipe (as run.py)')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.stages.split(',')) - set(STAGES))
    if unknown:
        parser.error(f'unknown stages {unknown}; valid: {",".join(STAGES)}')
    if args.synthetic_data and not (args.smoke and args.recipe == 'cifar10_resnet20'):
        parser.error('--synthetic-data is for the GPU smoke only: --recipe cifar10_resnet20 --smoke --synthetic-data')
    if args.seeds is not None and args.seeds < 2:
        parser.error('--seeds must be at least 2 (ε is the std of the dense accuracy across seeds)')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the requested stages, then the report; print a short summary."""
    args = parse_args(argv)
    logging.basicConfig(format='[reproduce %(asctime)s] %(message)s', datefmt='%H:%M:%S')
    logging.getLogger('reproduce').setLevel(logging.INFO)
    logging.getLogger('composer_imp').setLevel(logging.INFO)
    rep = Reproduction(args)
    os.makedirs(rep.out, exist_ok=True)
    started = time.perf_counter()
    invocation = {'started': datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S'),
                  'command': shlex.join(['python', 'benchmarks/reproduce.py', *(argv if argv is not None else sys.argv[1:])])}
    rep.book['invocations'].append(invocation)
    info = machine()
    if info not in rep.book.setdefault('machines', []):
        rep.book['machines'].append(info)
    rep.save_book()
    wanted = set(args.stages.split(','))
    failed = True
    try:
        for stage in STAGES[:-1]:
            if stage in wanted:
                rep.run_stage(stage, getattr(rep, f'stage_{stage}'), always=stage == 'compute')
        failed = False
    finally:
        invocation['seconds'] = time.perf_counter() - started
        rep.save_book()
        try:  # also after a failed or interrupted stage: the page shows what exists
            rep.run_stage('report', rep.stage_report, always=True)
        except Exception:  # noqa: BLE001 - after a failed stage, that stage's error is the one to report
            if not failed:
                raise
            log.exception('the results page could not be written')
    summary = Report(rep)
    print(f'results: {rep.results}')
    for line in summary.verdicts():
        print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
