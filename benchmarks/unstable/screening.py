"""Stage 1 of the unstable-regime experiment (issue 21): screen learning rates and rewind points for instability.

Appendix D's instability test (Frankle et al. 2020's linear mode connectivity): for each learning rate and rewind
point τ of :data:`PLAN`, a dense run (``find_ticket`` with ``levels=0``) writes the rewind point ``w_τ``; then
:func:`composer_imp.stability.instability` trains two copies of the dense network from ``w_τ`` with different data
orders and measures the error barrier (Definition A.1) on the line between them, on the full 10k test set. A
barrier well above zero at τ = 0 and near zero at a later τ is the regime of the paper's Figure 2 (purple, orange
and green rewind points), which ``conv_fc`` (stable at initialization) does not show. The path is evaluated as
``instability`` does: 11 points (β = 0, 0.1, …, 1), BatchNorm running statistics interpolated with the weights.

    python benchmarks/unstable/screening.py --out runs/unstable/screening
    python benchmarks/unstable/screening.py --out DIR --pairs 1 --lrs 0.4    # a subset of the plan

Resumable: each finished (learning rate, τ, pair of data seeds) is kept in ``OUT/screening.json`` and skipped on a
re-run; an interrupted setting resumes from the project's own artifacts (a finished dense run and trained copies
are reused). Writes ``OUT/screening.json`` (the plan, then one row per setting: barrier, the copies' errors, the
error along the path, wall time) and ``OUT/screening.png`` (barrier against τ, one line per learning rate). Run
folders: ``OUT/runs/lr<lr>/tau<τ>`` (the pair ``(a, b)``'s copies in ``stability/copy_seed<a|b>``, its results in
``stability/instability_seeds<a>-<b>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault('OMP_NUM_THREADS', '1')

import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from composer_imp import find_ticket  # noqa: E402
from composer_imp.run_folder import RunFolder, atomic_write_text  # noqa: E402
from composer_imp.config import config_from_dict  # noqa: E402
from composer_imp.recipes import build_recipe  # noqa: E402
from composer_imp.stability import instability  # noqa: E402

log = logging.getLogger('screening')


@dataclass(frozen=True)
class Plan:
    """Everything the screening varies or fixes. The recipe: ``allconv_gap`` (width 16, 60,688 prunable weights, no
    layer above 61%) on a fixed 20k-image Fashion-MNIST subset, 6 epochs of 156 batches of 128 (936 steps, about 66 s
    on one CPU core), SGD with momentum 0.9 and weight decay 5e-4, cosine decay to 0 without warm-up.

    Learning rates: 0.1 (the paper's CIFAR recipes) and 0.4. Without warm-up a larger step size makes the early
    trajectory more sensitive to SGD noise (Frankle et al. 2020 found warm-up or a smaller rate stabilizes VGG/ResNet
    at initialization), so 0.4 is the likelier unstable setting; both reach ≈ 89% dense test accuracy here.
    τ in batches: 0, 10, 25 (1/6 epoch), 78 (1/2), 156 (1 epoch), 312 (2 epochs) of 936. (τ = 10 was added after
    the first pass: at lr 0.4 the barrier fell from 30 points at τ = 0 to 1 point at τ = 25.)
    """

    lrs: tuple = (0.1, 0.4)
    taus: tuple = (0, 10, 25, 78, 156, 312)
    pairs: tuple = ((1, 2), (3, 4))  # data seeds of the copies (offsets from the run's own order); independent pairs
    seed: int = 17  # initialization and Trainer RNG: the same w_0 for every setting
    width: int = 16
    train_subset: int = 20000
    batch_size: int = 128
    epochs: int = 6
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = 'CosineAnnealingScheduler'
    tolerance: float = 0.01  # instability()'s `stable` flag: barrier ≤ 1 point of test error
    data_root: str = '/usr/share/datasets/fashion-mnist'

    def config(self, lr: float, tau: int, save_folder: str) -> dict:
        """The YAML recipe (as a dict) of one dense run: the rewind point at ``tau`` batches, no pruned level."""
        duration = f'{self.epochs}ep'
        return {
            'save_folder': save_folder, 'run_name': f'screening-lr{lr}-tau{tau}', 'seed': self.seed, 'device': 'cpu',
            'max_duration': duration, 'eval_interval': duration, 'progress_bar': False,
            'model': {'name': 'allconv_gap', 'num_classes': 10, 'in_channels': 1, 'width': self.width},
            'data': {'name': 'fashion_mnist', 'data_root': self.data_root, 'train_subset': self.train_subset,
                     'batch_size': self.batch_size, 'eval_batch_size': 1000},
            'optimizer': {'name': 'SGD', 'lr': lr, 'momentum': self.momentum, 'weight_decay': self.weight_decay},
            'scheduler': {'name': self.scheduler},
            'algorithms': {'IMP': {'ratio': 0.2, 'rewind': f'{tau}ba'}},
            'levels': 0,
        }


PLAN = Plan()


def setting_key(lr: float, tau: int, pair: Sequence[int]) -> str:
    return f'lr{lr}/tau{tau}/seeds{pair[0]}-{pair[1]}'


def run_setting(plan: Plan, out: str, lr: float, tau: int, pair: Sequence[int]) -> dict:
    """The dense run at (lr, τ) if not there yet, the two copies of ``pair`` from its ``w_τ``, and their barrier."""
    folder = os.path.join(out, 'runs', f'lr{lr}', f'tau{tau:04d}')
    cfg = config_from_dict(plan.config(lr, tau, folder))
    start = time.perf_counter()
    recipe = build_recipe(cfg)
    rows = find_ticket(recipe.make_trainer, folder, 0, seed=cfg.seed, device=recipe.device,
                       config={k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != 'overwrite'})
    dense_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = instability(recipe.make_trainer, folder, data_seeds=tuple(pair), tolerance=plan.tolerance)
    copies_seconds = time.perf_counter() - start
    run = RunFolder(folder)
    for ext in ('json', 'png'):  # instability() writes instability.{json,png}; keep one per pair
        shutil.copyfile(run.stability_result('instability', ext),
                        run.stability_result(f'instability_seeds{pair[0]}-{pair[1]}', ext))
    path = result['path']
    return {
        'lr': lr, 'tau': tau, 'tau_epochs': tau / (plan.train_subset // plan.batch_size), 'data_seeds': list(pair),
        'barrier': result['barrier'], 'copy_errors': result['errors'], 'max_error': path['max_error'],
        'betas': path['betas'], 'path_errors': path['errors'], 'path_losses': path['losses'],
        'stable': result['stable'], 'dense_accuracy': rows[0]['accuracy'],
        'wall_seconds': dense_seconds + copies_seconds, 'dense_run_seconds': dense_seconds,
        'copies_seconds': copies_seconds, 'folder': os.path.relpath(folder, out),
    }


def plot(plan: Plan, results: dict, path: str) -> None:
    """Barrier against τ (one line per learning rate: mean over pairs, each pair a dot) and the copies' error."""
    fig = Figure(figsize=(11, 4.4))
    ax_b, ax_e = fig.subplots(1, 2)
    per_epoch = plan.train_subset // plan.batch_size
    for i, lr in enumerate(plan.lrs):
        color = f'C{i}'
        rows = [r for r in results.values() if r['lr'] == lr]
        taus = sorted({r['tau'] for r in rows})
        if not taus:
            continue
        by_tau = {t: [r for r in rows if r['tau'] == t] for t in taus}
        pairs = sorted({len(v) for v in by_tau.values()})
        ax_b.plot(taus, [100 * statistics.mean(r['barrier'] for r in by_tau[t]) for t in taus], '-', color=color,
                  label=f'lr {lr}: mean over {"–".join(map(str, pairs))} pair(s) of copies (dots: each pair)')
        ax_b.plot([r['tau'] for r in rows], [100 * r['barrier'] for r in rows], 'o', color=color, alpha=0.6)
        errors = {t: [e for r in by_tau[t] for e in r['copy_errors']] for t in taus}
        ax_e.errorbar(taus, [100 * statistics.mean(errors[t]) for t in taus],
                      yerr=[100 * statistics.stdev(errors[t]) if len(errors[t]) > 1 else 0 for t in taus],
                      fmt='-o', color=color, capsize=3, label=f'lr {lr}')
    ax_b.axhline(100 * plan.tolerance, color='grey', ls='--', lw=1, label=f'tolerance {100 * plan.tolerance:g} point')
    ax_b.set_yscale('symlog', linthresh=0.1, linscale=0.5)
    top = max([100 * r['barrier'] for r in results.values()] + [2.0])
    ax_b.set_ylim(0, 1.6 * top)
    ticks = [t for t in (0, 0.1, 0.3, 1, 3, 10, 30, 100) if t <= 1.6 * top]
    ax_b.set_yticks(ticks)
    ax_b.set_yticklabels([f'{t:g}' for t in ticks])
    for ax in (ax_b, ax_e):
        ax.set_xscale('symlog', linthresh=10)
        ax.set_xlim(-1, 1.25 * max(plan.taus))
        ax.set_xticks(list(plan.taus))
        ax.set_xticklabels([str(t) for t in plan.taus])
        ax.set_xlabel(f'rewind step τ (batches of {plan.batch_size}; {per_epoch} per epoch, '
                      f'{plan.epochs * per_epoch} in all)')
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax_b.set_ylabel('error barrier between the copies (test, % points)')
    ax_b.set_title('Instability of the dense network trained from $w_τ$')
    ax_e.set_ylabel("the copies' test error (%, mean ± std)")
    ax_e.set_title('Test error of the copies trained from $w_τ$')
    fig.suptitle(f'allconv_gap (width {plan.width}) on Fashion-MNIST ({plan.train_subset // 1000}k train, '
                 f'{plan.epochs} ep, SGD m{plan.momentum}, cosine, no warm-up); full 10k test set, BatchNorm statistics '
                 'interpolated', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def load(path: str, plan: Plan) -> dict:
    if not os.path.isfile(path):
        return {}
    book = json.load(open(path))
    recorded = {k: v for k, v in book['plan'].items() if k not in ('lrs', 'taus', 'pairs')}
    current = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(plan))).items() if k not in ('lrs', 'taus', 'pairs')}
    if recorded != current:
        raise SystemExit(f'{path} was made with another recipe ({recorded}); use another --out.')
    return book['results']


def save(path: str, plan: Plan, results: dict, seconds: float) -> None:
    book = {'plan': dataclasses.asdict(plan), 'total_wall_seconds': seconds,
            'results': dict(sorted(results.items(), key=lambda kv: (kv[1]['lr'], kv[1]['tau'], kv[1]['data_seeds'])))}
    atomic_write_text(json.dumps(book, indent=2), path)


def table(results: dict) -> str:
    lines = ['| lr | τ (batches) | seeds | barrier (pts) | copies\' errors (%) | dense acc (%) | wall (s) |',
             '|---|---|---|---|---|---|---|']
    for r in sorted(results.values(), key=lambda r: (r['lr'], r['tau'], r['data_seeds'])):
        lines.append(f"| {r['lr']} | {r['tau']} | {r['data_seeds'][0]},{r['data_seeds'][1]} | {100 * r['barrier']:.2f} | "
                     f"{100 * r['copy_errors'][0]:.2f}, {100 * r['copy_errors'][1]:.2f} | "
                     f"{100 * r['dense_accuracy']:.2f} | {r['wall_seconds']:.0f} |")
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', required=True, help='output folder (screening.json, screening.png, runs/)')
    p.add_argument('--lrs', help='comma-separated subset of the plan\'s learning rates')
    p.add_argument('--taus', help='comma-separated subset of the plan\'s rewind steps (batches)')
    p.add_argument('--pairs', type=int, help='use only the first N pairs of data seeds')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(format='[screening %(asctime)s] %(message)s', datefmt='%H:%M:%S', level=logging.WARNING)
    log.setLevel(logging.INFO)
    logging.getLogger('composer_imp').setLevel(logging.INFO)
    plan = PLAN
    os.makedirs(args.out, exist_ok=True)
    book_path = os.path.join(args.out, 'screening.json')
    results = load(book_path, plan)
    previous = json.load(open(book_path)).get('total_wall_seconds', 0.0) if results else 0.0
    lrs = [float(x) for x in args.lrs.split(',')] if args.lrs else list(plan.lrs)
    taus = [int(x) for x in args.taus.split(',')] if args.taus else list(plan.taus)
    pairs = list(plan.pairs[:args.pairs] if args.pairs else plan.pairs)
    unknown = [x for x in lrs if x not in plan.lrs] + [x for x in taus if x not in plan.taus]
    if unknown:
        raise SystemExit(f'{unknown} not in the plan (lrs {plan.lrs}, taus {plan.taus}); edit PLAN instead.')
    started = time.perf_counter()
    for pair in pairs:  # every setting's first pair before any second pair: the figure is complete early
        for lr in lrs:
            for tau in taus:
                key = setting_key(lr, tau, pair)
                if key in results:
                    log.info('%s done (barrier %.2f pts), skipped', key, 100 * results[key]['barrier'])
                    continue
                log.info('%s ...', key)
                results[key] = run_setting(plan, args.out, lr, tau, pair)
                r = results[key]
                log.info('%s: barrier %.2f pts, copies %.2f%% / %.2f%%, %.0f s', key, 100 * r['barrier'],
                         100 * r['copy_errors'][0], 100 * r['copy_errors'][1], r['wall_seconds'])
                save(book_path, plan, results, previous + time.perf_counter() - started)
                plot(plan, results, os.path.join(args.out, 'screening.png'))
    save(book_path, plan, results, previous + time.perf_counter() - started)
    plot(plan, results, os.path.join(args.out, 'screening.png'))
    print(table(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
