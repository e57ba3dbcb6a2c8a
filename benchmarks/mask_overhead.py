"""Per-step overhead of keeping a pruning mask with ``KeepMask``, measured inside a real Composer ``Trainer``.

Three variants of the same CPU/fp32 training step on a CIFAR ResNet-20 (batch of random 3x32x32 inputs, random
labels, SGD lr=0.1 momentum=0.9 weight_decay=1e-4) are timed side by side in one process:

* ``dense``       a plain Composer training step;
* ``masked``      the same step with ``composer_imp.keep_mask.KeepMask`` holding a global magnitude mask
                  (``full_mask`` + ``magnitude_prune(model, mask, sparsity)``); it hooks FIT_START,
                  AFTER_TRAIN_BATCH and BATCH_END, so it only runs honestly inside a real ``Trainer``;
* ``torch_prune`` the step after ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=sparsity)``
                  over the same conv/linear weights (reference only: it recomputes ``weight = weight_orig * mask``
                  in a forward pre-hook).

Each round builds, for every variant, a fresh model, optimizer and ``Trainer`` (closed at the end of the round) and
trains each for ``--steps`` batches; the first ``--warmup`` batches of each Trainer are discarded. A small callback
records ``time.perf_counter()`` at BATCH_START and BATCH_END (callbacks run after algorithms, so the BATCH_END mark
includes KeepMask's BATCH_END work; AFTER_TRAIN_BATCH lies in between).

``--interleave step`` (default) keeps the three Trainers alive together and advances them in lockstep, one
``fit(duration='1ba')`` each in a rotating order, so every masked step is paired with a dense step run a second
earlier or later: load from other processes (a shared or busy machine) hits both alike. ``--interleave fit`` instead
runs one ``fit()`` of ``--steps`` batches per variant per round, in a rotating order (closer to a real run, but a
burst of outside load can then land on one variant's whole fit).

Reported: per-variant pooled medians, a low quantile, and the paired ratio (median of per-step ratios in ``step``
mode, of per-round fit-median ratios in ``fit`` mode), over all pairs and over the quiet pairs (both members
within ``--quiet-factor`` of the fastest step of any variant); the final line quotes the quiet-pair ratio when there
are enough of them.
Also printed: that the pruned weights (and their momentum) are exactly 0.0 after every masked run, and KeepMask's
own hook time per step, inside the Trainer and in isolation.

Usage:
    python benchmarks/mask_overhead.py                 # defaults: 6 rounds x 12 steps, batch 128, 80% sparse
    python benchmarks/mask_overhead.py --rounds 3 --steps 10 --threads 1
    python benchmarks/mask_overhead.py --interleave fit --steps 20 --rounds 5
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

from composer_imp.keep_mask import KeepMask, mask_gradients, mask_params_and_state
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


class TimedKeepMask(KeepMask):
    """``KeepMask`` unchanged, plus the wall time of each ``apply`` call (two perf_counter calls, ~1 us per event)."""

    def __init__(self, mask):
        super().__init__(mask)
        self.apply_times: dict[str, list[float]] = {}

    def apply(self, event, state, logger):
        t0 = time.perf_counter()
        super().apply(event, state, logger)
        self.apply_times.setdefault(event.name, []).append(time.perf_counter() - t0)


def make_model(seed: int, name: str = 'resnet20'):
    torch.manual_seed(seed)
    return build_model(name, num_classes=10)


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


class Run:
    """One variant's fresh model, optimizer and Composer ``Trainer`` (with the step timer)."""

    def __init__(self, variant: str, loader: DataLoader, args: argparse.Namespace):
        self.variant = variant
        self.model = make_model(args.seed, args.model)
        self.mask = None
        algorithms = []
        if variant == 'masked':
            self.mask = magnitude_prune(self.model, full_mask(self.model), args.sparsity)
            algorithms = [TimedKeepMask(self.mask)]
        elif variant == 'torch_prune':
            targets = [(module, 'weight') for module in self.model.modules()
                       if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=args.sparsity)
        self.algo = algorithms[0] if algorithms else None
        self.optimizer = make_optimizer(self.model)  # after pruning: torch.prune renames `weight` to `weight_orig`
        self.timer = StepTimer(args.threads)
        self.trainer = Trainer(
            model=self.model,
            optimizers=self.optimizer,
            train_dataloader=loader,
            max_duration=f'{args.steps}ba',
            algorithms=algorithms,
            callbacks=[self.timer],
            progress_bar=False,
            log_to_console=False,
            device=args.device,
            precision=args.precision,
            seed=args.seed,
        )

    def finish(self, args: argparse.Namespace) -> dict:
        """Close the Trainer; return the kept step times and the post-training checks."""
        self.trainer.close()
        self.trainer = None
        result = {'times': self.timer.times[args.warmup:], 'n_steps': len(self.timer.times)}
        if self.variant == 'masked':
            params = prunable_parameters(self.model)
            mask = self.mask
            nonzero = sum(int((params[n].detach()[~m] != 0).sum()) for n, m in mask.items())
            momentum_nonzero = 0
            for n, m in mask.items():
                buf = self.optimizer.state.get(params[n], {}).get('momentum_buffer')
                if buf is not None:
                    momentum_nonzero += int((buf[~m] != 0).sum())
            result.update(pruned=sum(int((~m).sum()) for m in mask.values()), remaining=count_remaining(mask),
                          pruned_nonzero=nonzero, momentum_nonzero=momentum_nonzero, algo=self.algo,
                          optimizer=self.optimizer,
                          hook_times={k: v if k == 'FIT_START' else v[args.warmup:]
                                      for k, v in self.algo.apply_times.items()})
        elif self.variant == 'torch_prune':
            masks = [b for name, b in self.model.named_buffers() if name.endswith('weight_mask')]
            result.update(pruned=sum(int((b == 0).sum()) for b in masks), total=sum(b.numel() for b in masks))
        return result


def round_by_fit(loader: DataLoader, args: argparse.Namespace, r: int) -> dict[str, dict]:
    """Each variant in turn: a fresh Trainer fits ``args.steps`` batches in one ``fit()``."""
    results = {}
    for i in range(len(VARIANTS)):
        variant = VARIANTS[(i + r) % len(VARIANTS)]  # rotate the order from round to round
        run = Run(variant, loader, args)
        gc.collect()
        try:
            run.trainer.fit()
        finally:
            results[variant] = run.finish(args)
    return results


def round_by_step(loader: DataLoader, args: argparse.Namespace, r: int) -> dict[str, dict]:
    """All variants' Trainers alive at once, advanced in lockstep one batch at a time (``fit(duration='1ba')``).

    Step ``i`` of every variant runs within about a second of the others, so load from other processes hits all
    variants alike. The order rotates every step. FIT_START (and so KeepMask's rebinding) runs before every batch,
    outside the timed BATCH_START..BATCH_END window.
    """
    runs = {v: Run(v, loader, args) for v in VARIANTS}
    gc.collect()
    try:
        for step in range(args.steps):
            for i in range(len(VARIANTS)):
                runs[VARIANTS[(i + step + r) % len(VARIANTS)]].trainer.fit(duration='1ba')
    finally:
        results = {v: run.finish(args) for v, run in runs.items()}
    return results


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
        mask_params_and_state(pairs, [optimizer])
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
    parser.add_argument('--steps', type=int, default=12, help='batches per fit (including warm-up)')
    parser.add_argument('--warmup', type=int, default=3, help='batches discarded at the start of each fit')
    parser.add_argument('--rounds', type=int, default=6, help='interleaved rounds; each fits every variant once')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='torch.set_num_threads')
    parser.add_argument('--sparsity', type=float, default=0.8, help='fraction of conv/linear weights pruned')
    parser.add_argument('--seed', type=int, default=17)
    parser.add_argument('--model', choices=('resnet20', 'resnet50'), default='resnet20')
    parser.add_argument('--image-size', type=int, default=32, help='input height and width (224 for resnet50)')
    parser.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
    parser.add_argument('--precision', default='fp32', help="Composer precision, e.g. fp32, amp_bf16 (GPU)")
    parser.add_argument('--interleave', choices=('step', 'fit'), default='step',
                        help="'step': the variants' Trainers advance in lockstep, one batch each in turn (robust to "
                             "load from other processes); 'fit': each variant fits all its steps in turn per round")
    parser.add_argument('--low-q', type=float, default=0.2, help='low quantile reported as a contention-robust ratio')
    parser.add_argument('--quiet-factor', type=float, default=1.3,
                        help='a pair is quiet when both its times are <= this x the fastest step of any variant')
    parser.add_argument('--time-budget', type=float, default=270,
                        help='seconds; no new round starts when it would end past this (at least one round runs)')
    parser.add_argument('--target', type=float, default=1.02, help='masked/dense ratio to report against')
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f'--steps ({args.steps}) must exceed --warmup ({args.warmup}).')

    warnings.filterwarnings('ignore')
    logging.getLogger('composer').setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(args.seed)
    n = args.steps * args.batch_size
    data = TensorDataset(torch.randn(n, 3, args.image_size, args.image_size, generator=g), torch.randint(0, 10, (n,), generator=g))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=0, drop_last=True)

    print(f'mask_overhead: ResNet-20, batch {args.batch_size} x 3x32x32 fp32, CPU, torch {torch.__version__}, '
          f'threads={args.threads} (cpu_count={os.cpu_count()}), sparsity={args.sparsity}, '
          f'{args.rounds} rounds x {args.steps} steps (first {args.warmup} of each fit discarded), '
          f'interleave={args.interleave}, 1-min load average {os.getloadavg()[0]:.1f}', flush=True)

    load_start = os.getloadavg()
    start = time.perf_counter()
    # Untimed process warm-up (allocator, oneDNN kernels, lazy imports): one short round.
    run_round = round_by_step if args.interleave == 'step' else round_by_fit
    run_round(loader, argparse.Namespace(**{**vars(args), 'steps': args.warmup + 1}), 0)
    print(f'  warm-up round done  elapsed {time.perf_counter() - start:.0f}s', flush=True)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    pairs: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}  # (variant time, dense time)
    checks: list[dict] = []
    prune_info: dict = {}
    rounds_done = 0
    for r in range(args.rounds):
        round_start = time.perf_counter()
        results = run_round(loader, args, r)
        rounds_done += 1
        for variant, res in results.items():
            if res['n_steps'] != args.steps:
                raise RuntimeError(f'{variant}: ran {res["n_steps"]} batches, expected {args.steps}.')
            times[variant].extend(res['times'])
        for variant, res in results.items():
            if args.interleave == 'step':  # step i of a variant against step i of dense, same round
                pairs[variant].extend(zip(res['times'], results['dense']['times']))
            else:  # fit median against the dense fit median of the same round
                pairs[variant].append((statistics.median(res['times']),
                                       statistics.median(results['dense']['times'])))
        checks.append(results['masked'])
        prune_info = results['torch_prune']
        line = ', '.join(f'{v}={statistics.median(results[v]["times"]) * 1e3:.1f}ms' for v in VARIANTS)
        elapsed = time.perf_counter() - start
        print(f'  round {r + 1}/{args.rounds} [median step {line}]  threads={torch.get_num_threads()}  '
              f'elapsed {elapsed:.0f}s', flush=True)
        if r + 1 < args.rounds and elapsed + (time.perf_counter() - round_start) > args.time_budget:
            print(f'  stopping after {r + 1} rounds: another round would exceed --time-budget {args.time_budget:.0f}s '
                  f'(the machine is slower or busier than expected)', flush=True)
            break
    last_masked = checks[-1]

    dense = statistics.median(times['dense'])
    low_dense = quantile(times['dense'], args.low_q)
    print()
    print(f'{"variant":<12} {"steps":>5} {"median ms":>10} {"p10 ms":>8} {"p90 ms":>8} {"min ms":>8} '
          f'{"median/dense":>13} {f"p{round(args.low_q * 100)}/dense":>10} '
          f'{f"paired-{args.interleave} ratio [p10, p90]":>26} {"quiet pairs":>15}')
    pair_desc = ('median over all steps of variant-step-i / dense-step-i, run back to back'
                 if args.interleave == 'step'
                 else 'median over rounds of variant-fit-median / dense-fit-median of the same round')
    # Quiet pairs: both members within --quiet-factor of the fastest step of any variant. On a shared machine other
    # processes make whole stretches of steps several times slower (OpenMP threads fighting for the cores); pairs
    # from those stretches only add noise. On an idle machine (nearly) every pair is quiet.
    fastest = min(min(ts) for ts in times.values())  # the best estimate of an undisturbed step
    quiet_limit = args.quiet_factor * fastest
    paired: dict[str, float] = {}
    paired_all: dict[str, float] = {}
    n_quiet: dict[str, int] = {}
    for v in VARIANTS:
        ts = times[v]
        med = statistics.median(ts)
        ratios = [a / b for a, b in pairs[v]]
        quiet = [a / b for a, b in pairs[v] if max(a, b) <= quiet_limit]
        paired_all[v] = statistics.median(ratios)
        n_quiet[v] = len(quiet)
        paired[v] = statistics.median(quiet) if quiet else float('nan')
        print(f'{v:<12} {len(ts):>5} {med * 1e3:>10.1f} {quantile(ts, .1) * 1e3:>8.1f} '
              f'{quantile(ts, .9) * 1e3:>8.1f} {min(ts) * 1e3:>8.1f} {med / dense:>12.3f}x '
              f'{quantile(ts, args.low_q) / low_dense:>9.3f}x '
              f'{paired_all[v]:>9.3f}x [{quantile(ratios, .1):.3f}, {quantile(ratios, .9):.3f}] '
              f'{(f"{statistics.median(quiet):.3f}x" if quiet else "-"):>9} {len(quiet):>3}/{len(ratios)}')
    use_quiet = all(n_quiet[v] >= max(5, len(pairs[v]) // 5) for v in ('masked', 'torch_prune'))
    if not use_quiet:
        paired = paired_all
    load_end = os.getloadavg()
    if max(load_start[0], load_end[0]) > args.threads + 0.5 or max(times['dense']) > 2 * dense:
        print(f'WARNING: the machine looks busy (1-min load average {load_start[0]:.1f} at start, {load_end[0]:.1f} '
              f'at end, {args.threads} threads used; slowest dense step {max(times["dense"]) * 1e3:.0f}ms). Absolute '
              f'times and pooled medians are then inflated by other processes; the paired ratio ({pair_desc}) over '
              f'quiet pairs (both <= {quiet_limit * 1e3:.0f}ms) is the robust number.'
              + (' With --threads equal to the core count, OpenMP threads stall (often 10x slower steps) whenever '
                 'another process takes a core; --threads 1 (or fewer than the idle cores) measures cleanly on a '
                 'shared machine.' if args.threads >= (os.cpu_count() or 1) else ''))
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
    in_situ = {k: statistics.median([t for c in checks for t in c['hook_times'].get(k, [])]) for k in
               ('FIT_START', 'AFTER_TRAIN_BATCH', 'BATCH_END')}
    per_step = in_situ['AFTER_TRAIN_BATCH'] + in_situ['BATCH_END']
    print(f'KeepMask.apply inside the Trainer (median per call): FIT_START {in_situ["FIT_START"] * 1e3:.2f}ms (per '
          f'fit() call, untimed), AFTER_TRAIN_BATCH {in_situ["AFTER_TRAIN_BATCH"] * 1e3:.2f}ms + BATCH_END '
          f'{in_situ["BATCH_END"] * 1e3:.2f}ms = {per_step * 1e3:.2f}ms per step = {per_step / fastest:.2%} of the '
          f'fastest step ({fastest * 1e3:.0f}ms)')
    g_cost, e_cost = hook_cost(last_masked['algo'], last_masked['optimizer'])
    print(f'KeepMask hook cost in isolation ({len(last_masked["algo"]._pairs)} tensors): '
          f'AFTER_TRAIN_BATCH {g_cost * 1e3:.2f}ms + BATCH_END {e_cost * 1e3:.2f}ms = '
          f'{(g_cost + e_cost) * 1e3:.2f}ms = {(g_cost + e_cost) / fastest:.2%} of the fastest step')
    ratio, ref = paired['masked'], paired['torch_prune']
    basis = (f'paired-{args.interleave} ratios over quiet pairs' if use_quiet else
             f'paired-{args.interleave} ratios over all pairs (too few quiet pairs)')
    print(f'total wall time {time.perf_counter() - start:.0f}s ({rounds_done}/{args.rounds} rounds)')
    print()
    print(f'masked/dense = {ratio:.3f}x (target <= {args.target:.2f}), torch.prune/dense = {ref:.3f}x   '
          f'[{basis}; all pairs: {paired_all["masked"]:.3f}x, {paired_all["torch_prune"]:.3f}x; pooled medians: '
          f'{statistics.median(times["masked"]) / dense:.3f}x, {statistics.median(times["torch_prune"]) / dense:.3f}x]')
    return 0 if all_zero else 1


if __name__ == '__main__':
    sys.exit(main())
