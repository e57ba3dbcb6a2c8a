"""Fixed-ratio IMP vs AdaptiveIMP to the same imp.target_sparsity, same seed, side by side.

    python benchmarks/adaptive_vs_fixed.py -f yamls/quickstart.yaml --target 0.9 [--seeds 3] [key=value ...]

Prints, for each: levels trained, training steps, compute with sweeps (training-step equivalents),
final weights remaining, final accuracy vs dense, the ratio adaptive/fixed per seed, and whether the adaptive
ticket matches (within one std of dense across seeds, 0.5 points with one seed); writes
accuracy_vs_compute.png comparing both.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from composer_imp.config import load_config  # noqa: E402
from composer_imp.plots import plot_accuracy_vs_compute  # noqa: E402
from composer_imp.recipes import run_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-f', '--file', default='yamls/quickstart.yaml')
    parser.add_argument('--target', type=float, default=0.9, help='imp.target_sparsity for both runs')
    parser.add_argument('--seeds', type=int, default=1, help='replicates: seeds seed, seed+1, ... of both runs')
    parser.add_argument('--out', default='runs/adaptive_vs_fixed')
    parser.add_argument('overrides', nargs='*')
    args = parser.parse_args()

    results = {}
    for name, extra in (('fixed', ['imp.adaptive.enabled=false']), ('adaptive', ['imp.adaptive.enabled=true'])):
        cfg = load_config(args.file, [*args.overrides, *extra, f'imp.target_sparsity={args.target}', 'imp.levels=40',
                                      f'save_folder={os.path.join(args.out, name)}', 'progress_bar=false',
                                      f'replicates={args.seeds}', 'analysis.enabled=false'])
        runs = run_config(cfg, overwrite=True)
        results[name] = runs if args.seeds > 1 else [runs]  # one list of rows per seed

    print(f'\n{"run":<10}{"seed":>5}{"levels":>8}{"train steps":>13}{"compute":>12}{"sweep share":>13}{"remaining":>11}{"acc":>9}{"dense":>9}')
    for name, runs in results.items():
        for seed, rows in enumerate(runs):
            last = rows[-1]
            sweep = sum(r['compute'] - r['steps'] for r in rows)
            print(f'{name:<10}{seed:>5}{len(rows) - 1:>8}{last["cumulative_steps"]:>13}{last["cumulative_compute"]:>12.1f}'
                  f'{sweep / last["cumulative_compute"]:>12.2%}{100 * last["weights_remaining"]:>10.1f}%'
                  f'{100 * last["accuracy"]:>8.2f}%{100 * rows[0]["accuracy"]:>8.2f}%')
    steps = [a[-1]['cumulative_steps'] / f[-1]['cumulative_steps'] for f, a in zip(results['fixed'], results['adaptive'])]
    compute = [a[-1]['cumulative_compute'] / f[-1]['cumulative_compute'] for f, a in zip(results['fixed'], results['adaptive'])]
    dense = [rows[0]['accuracy'] for rows in results['fixed']]
    final = [rows[-1]['accuracy'] for rows in results['adaptive']]
    # Matching: the adaptive ticket's mean accuracy within one std of the dense accuracy across seeds (0.5 points with one seed).
    band = statistics.stdev(dense) if len(dense) > 1 else 0.005
    gap = statistics.fmean(dense) - statistics.fmean(final)
    print(f'\nadaptive/fixed per seed: training steps {", ".join(f"{x:.2f}" for x in steps)}; '
          f'compute with sweeps {", ".join(f"{x:.2f}" for x in compute)} (mean {statistics.fmean(compute):.2f}, target <= 0.50)')
    print(f'adaptive final accuracy {100 * statistics.fmean(final):.2f}% vs dense {100 * statistics.fmean(dense):.2f}% '
          f'(band {100 * band:.2f} points): {"matching" if gap <= band else "NOT matching"}')
    labelled = {f'{name} seed {i}': rows for name, runs in results.items() for i, rows in enumerate(runs)}
    print(plot_accuracy_vs_compute(labelled, os.path.join(args.out, 'accuracy_vs_compute.png')))


if __name__ == '__main__':
    main()
