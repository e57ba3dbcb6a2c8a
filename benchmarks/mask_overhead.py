"""Per-step overhead of keeping a pruning mask with ``KeepMask``, measured inside a real Composer ``Trainer``.

Three variants of the same CPU/fp32 training step on a CIFAR ResNet-20 (batch of random 3x32x32 inputs, random
labels, SGD lr=0.1 momentum=0.9 weight_decay=1e-4) are timed side by side in one process:

* ``dense``       a plain Composer training step;
* ``masked``      the same step with ``composer_imp.algorithms.KeepMask`` holding a global magnitude mask
                  (``full_mask`` + ``magnitude_prune(model, mask, sparsity)``); it hooks FIT_START,
                  AFTER_TRAIN_BATCH and BATCH_END, so it only runs honestly inside a real ``Trainer``;
* ``torch_prune`` the step after ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=sparsity)``
                  over the same conv/linear weights (reference only: it recomputes ``weight = weight_orig * mask``
                  in a forward pre-hook).

Each round fits every variant once (a fresh model, optimizer and ``Trainer`` per fit, closed afterwards), in a
rotating order, for ``--steps`` batches; the first ``--warmup`` batches of each fit are discarded. A small callback
records ``time.perf_counter()`` at BATCH_START and BATCH_END (callbacks run after algorithms, so the BATCH_END mark
includes KeepMask's BATCH_END work; AFTER_TRAIN_BATCH lies in between). Medians over all kept steps are reported.

Usage:
    python benchmarks/mask_overhead.py                 # defaults: 5 rounds x 20 steps, batch 128, 80% sparse
    python benchmarks/mask_overhead.py --rounds 3 --steps 10 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import time
import warnings

import torch
from composer import Trainer
from composer.core import Callback, State
from composer.loggers import Logger
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

from composer_imp.algorithms import KeepMask, _mask_params_and_state, mask_gradients
from composer_imp.masks import count_remaining, full_mask, magnitude_prune, prunable_parameters
from composer_imp.models import build_model

VARIANTS = ('dense', 'masked', 'torch_prune')


class StepTimer(Callback):
    """Wall time of each training batch, BATCH_START -> BATCH_END (forward, backward, optimizer step, hooks)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.times: list[float] = []
        self._t0 = 0.0

    def fit_start(self, state: State, logger: Logger) -> None:
        # Keep the thread count fixed whatever the Trainer did at construction.
        torch.set_num_threads(self.threads)

    def batch_start(self, state: State, logger: Logger) -> None:
        self._t0 = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        self.times.append(time.perf_counter() - self._t0)


def make_model(seed: int):
    torch.manual_seed(seed)
    return build_model('resnet20', num_classes=10)


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def fit_once(variant: str, loader: DataLoader, args: argparse.Namespace) -> dict:
    """One fresh model + Trainer for ``args.steps`` batches; returns step times and post-fit checks."""
    model = make_model(args.seed)
    algorithms = []
    mask = None
    if variant == 'masked':
        mask = magnitude_prune(model, full_mask(model), args.sparsity)
        algorithms = [KeepMask(mask)]
    elif variant == 'torch_prune':
        targets = [(module, 'weight') for module in model.modules()
                   if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=args.sparsity)
    optimizer = make_optimizer(model)  # after pruning: torch.prune renames `weight` to `weight_orig`
    timer = StepTimer(args.threads)
    trainer = Trainer(
        model=model,
        optimizers=optimizer,
        train_dataloader=loader,
        max_duration=f'{args.steps}ba',
        algorithms=algorithms,
        callbacks=[timer],
        progress_bar=False,
        log_to_console=False,
        device='cpu',
        seed=args.seed,
    )
    gc.collect()
    try:
        trainer.fit()
    finally:
        trainer.close()
    result = {'times': timer.times[args.warmup:], 'n_steps': len(timer.times)}
    if variant == 'masked':
        params = prunable_parameters(model)
        pruned = sum(int((~m).sum()) for m in mask.values())
        nonzero = sum(int((params[n].detach()[~m] != 0).sum()) for n, m in mask.items())
        momentum_nonzero = 0
        for n, m in mask.items():
            buf = optimizer.state.get(params[n], {}).get('momentum_buffer')
            if buf is not None:
                momentum_nonzero += int((buf[~m] != 0).sum())
        result.update(pruned=pruned, pruned_nonzero=nonzero, momentum_nonzero=momentum_nonzero,
                      remaining=count_remaining(mask), algo=algorithms[0], optimizer=optimizer)
    elif variant == 'torch_prune':
        masks = [b for name, b in model.named_buffers() if name.endswith('weight_mask')]
        result.update(pruned=sum(int((b == 0).sum()) for b in masks), total=sum(b.numel() for b in masks))
    del trainer
    return result


def hook_cost(algo: KeepMask, optimizer: torch.optim.Optimizer, reps: int = 50) -> tuple[float, float]:
    """Median seconds of KeepMask's per-step work outside the Trainer: (AFTER_TRAIN_BATCH, BATCH_END)."""
    pairs = algo._pairs
    for p, _ in pairs:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grad_t, end_t = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        mask_gradients(pairs)
        t1 = time.perf_counter()
        _mask_params_and_state(pairs, [optimizer])
        t2 = time.perf_counter()
        grad_t.append(t1 - t0)
        end_t.append(t2 - t1)
    return statistics.median(grad_t), statistics.median(end_t)


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--steps', type=int, default=20, help='batches per fit (including warm-up)')
    parser.add_argument('--warmup', type=int, default=3, help='batches discarded at the start of each fit')
    parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds; each fits every variant once')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='torch.set_num_threads')
    parser.add_argument('--sparsity', type=float, default=0.8, help='fraction of conv/linear weights pruned')
    parser.add_argument('--seed', type=int, default=17)
    parser.add_argument('--low-q', type=float, default=0.2, help='low quantile reported as a contention-robust ratio')
    parser.add_argument('--target', type=float, default=1.02, help='masked/dense ratio to report against')
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f'--steps ({args.steps}) must exceed --warmup ({args.warmup}).')

    warnings.filterwarnings('ignore')
    logging.getLogger('composer').setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(args.seed)
    n = args.steps * args.batch_size
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=0, drop_last=True)

    print(f'mask_overhead: ResNet-20, batch {args.batch_size} x 3x32x32 fp32, CPU, torch {torch.__version__}, '
          f'threads={args.threads} (cpu_count={os.cpu_count()}), sparsity={args.sparsity}, '
          f'{args.rounds} rounds x {args.steps} steps (first {args.warmup} of each fit discarded)', flush=True)

    load_start = os.getloadavg()
    start = time.perf_counter()
    # Untimed process warm-up (allocator, oneDNN kernels, lazy imports): one short fit of every variant.
    for variant in VARIANTS:
        fit_once(variant, loader, argparse.Namespace(**{**vars(args), 'steps': args.warmup + 1}))
    print(f'  warm-up fits done  elapsed {time.perf_counter() - start:.0f}s', flush=True)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    round_medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    checks: list[dict] = []
    prune_info: dict = {}
    last_masked: dict = {}
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]  # rotate to cancel drift/order effects
        line = []
        for variant in order:
            res = fit_once(variant, loader, args)
            if res['n_steps'] != args.steps:
                raise RuntimeError(f'{variant}: ran {res["n_steps"]} batches, expected {args.steps}.')
            times[variant].extend(res['times'])
            med = statistics.median(res['times'])
            round_medians[variant].append(med)
            line.append(f'{variant}={med * 1e3:.1f}ms')
            if variant == 'masked':
                checks.append(res)
                last_masked = res
            elif variant == 'torch_prune':
                prune_info = res
        print(f'  round {r + 1}/{args.rounds} [{", ".join(line)}]  '
              f'threads={torch.get_num_threads()}  elapsed {time.perf_counter() - start:.0f}s', flush=True)

    dense = statistics.median(times['dense'])
    low_dense = quantile(times['dense'], args.low_q)
    print()
    print(f'{"variant":<12} {"steps":>5} {"median ms":>10} {"p10 ms":>8} {"p90 ms":>8} {"min ms":>8} '
          f'{"median/dense":>13} {f"p{round(args.low_q * 100)}/dense":>10} {"paired round ratio med [min, max]":>34}')
    paired: dict[str, float] = {}
    for v in VARIANTS:
        ts = times[v]
        med = statistics.median(ts)
        per_round = [a / b for a, b in zip(round_medians[v], round_medians['dense'])]
        paired[v] = statistics.median(per_round)
        print(f'{v:<12} {len(ts):>5} {med * 1e3:>10.1f} {quantile(ts, .1) * 1e3:>8.1f} {quantile(ts, .9) * 1e3:>8.1f} '
              f'{min(ts) * 1e3:>8.1f} {med / dense:>12.3f}x {quantile(ts, args.low_q) / low_dense:>9.3f}x '
              f'{paired[v]:>16.3f}x [{min(per_round):.3f}, {max(per_round):.3f}]')
    load_end = os.getloadavg()
    if max(load_start[0], load_end[0]) > args.threads + 0.5 or max(times['dense']) > 2 * dense:
        print(f'WARNING: the machine looks busy (1-min load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at '
              f'end, {args.threads} threads used; slowest dense step {max(times["dense"]) * 1e3:.0f}ms). Pooled medians '
              f'are then skewed by whole fits that ran under contention; the paired per-round ratio (median over rounds '
              f'of masked-fit-median / dense-fit-median in the same round) and the low-quantile ratio are the robust '
              f'numbers. Rerun on an idle machine for clean absolute times.')
    print()
    total_pruned = checks[0]['pruned']
    all_zero = all(c['pruned_nonzero'] == 0 for c in checks)
    mom_zero = all(c['momentum_nonzero'] == 0 for c in checks)
    total = total_pruned + checks[0]['remaining']
    print(f'masked check: {total_pruned}/{total} weights pruned ({total_pruned / total:.1%}); after every masked fit '
          f'pruned weights exactly 0.0: {all_zero} (nonzero counts {[c["pruned_nonzero"] for c in checks]}); '
          f'their momentum exactly 0.0: {mom_zero}')
    print(f'torch_prune check: {prune_info["pruned"]}/{prune_info["total"]} weights masked '
          f'({prune_info["pruned"] / prune_info["total"]:.1%})')
    g_cost, e_cost = hook_cost(last_masked['algo'], last_masked['optimizer'])
    print(f'KeepMask hook cost in isolation ({len(last_masked["algo"]._pairs)} tensors): '
          f'AFTER_TRAIN_BATCH {g_cost * 1e3:.2f}ms + BATCH_END {e_cost * 1e3:.2f}ms = '
          f'{(g_cost + e_cost) * 1e3:.2f}ms = {(g_cost + e_cost) / dense:.2%} of a dense step')
    ratio, ref = paired['masked'], paired['torch_prune']
    print(f'total wall time {time.perf_counter() - start:.0f}s')
    print()
    print(f'masked/dense = {ratio:.3f}x (target <= {args.target:.2f}), torch.prune/dense = {ref:.3f}x   '
          f'[paired per-round medians; pooled medians: {statistics.median(times["masked"]) / dense:.3f}x, '
          f'{statistics.median(times["torch_prune"]) / dense:.3f}x]')
    return 0 if all_zero else 1


if __name__ == '__main__':
    sys.exit(main())
