"""Fixed-ratio IMP vs AdaptiveIMP to the same target_sparsity, same seed, side by side.

    python benchmarks/adaptive_vs_fixed.py -f yamls/quickstart.yaml --target 0.9 [--seeds 3]
        [--baselines eval train] [--adaptive subsample=2048 ...] [key=value ...]

The recipe's ``algorithms.IMP`` settings are used for both; the adaptive runs replace it with ``AdaptiveIMP`` with
the same settings plus ``--adaptive`` keyword arguments. Runs fixed-ratio IMP and one AdaptiveIMP run per threshold
baseline (``baseline``: ``eval``, the
dense solution's eval-mode loss on the sweep subsample, and/or ``train``, the mean train-mode batch loss of the
dense run's last epoch). Prints, for each: levels trained, the ratios pruned, training steps, compute with
sweeps (training-step equivalents), final weights remaining, final accuracy vs dense, how many levels stayed
matching, the ratio adaptive/fixed per seed, and whether the final adaptive ticket matches (within ε, one std of
dense across seeds, or one point with one seed: composer_imp.criteria); writes accuracy_vs_compute.png comparing all runs.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omegaconf import OmegaConf  # noqa: E402

from composer_imp.config import IMP_NAMES, config_from_dict, load_config  # noqa: E402
from composer_imp.criteria import DEFAULT_TOLERANCE, is_matching  # noqa: E402
from composer_imp.criteria import epsilon as estimate_epsilon  # noqa: E402
from composer_imp.plots import plot_accuracy_vs_compute  # noqa: E402
from composer_imp.recipes import run_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-f', '--file', default='yamls/quickstart.yaml')
    parser.add_argument('--target', type=float, default=0.9, help='target_sparsity for both runs')
    parser.add_argument('--seeds', type=int, default=1, help='replicates: seeds seed, seed+1, ... of both runs')
    parser.add_argument('--baselines', nargs='+', default=['eval', 'train'], choices=['eval', 'train'],
                        help='one adaptive run per threshold baseline (AdaptiveIMP baseline)')
    parser.add_argument('--adaptive', nargs='*', default=[], metavar='KEY=VALUE',
                        help='more AdaptiveIMP keyword arguments, e.g. subsample=2048')
    parser.add_argument('--out', default='runs/adaptive_vs_fixed')
    parser.add_argument('overrides', nargs='*')
    args = parser.parse_args()

    adaptive = dict(OmegaConf.to_container(OmegaConf.from_dotlist(args.adaptive)))
    variants = [('fixed', None, {})] + [(f'adaptive-{b}', 'AdaptiveIMP', {**adaptive, 'baseline': b}) for b in args.baselines]
    results = {}
    for name, component, extra in variants:
        cfg = load_config(args.file, [*args.overrides, f'target_sparsity={args.target}', 'levels=40',
                                      f'save_folder={os.path.join(args.out, name)}', 'progress_bar=false',
                                      f'replicates={args.seeds}', 'analysis.enabled=false'])
        if component is not None:
            user = OmegaConf.to_container(cfg, resolve=True)
            imp = next(n for n in IMP_NAMES if n in user['algorithms'])
            user['algorithms'][component] = {**(user['algorithms'].pop(imp) or {}), **extra}
            cfg = config_from_dict(user)
        runs = run_config(cfg, overwrite=True)
        results[name] = runs if args.seeds > 1 else [runs]  # one list of rows per seed

    dense = [rows[0]['accuracy'] for rows in results['fixed']]
    # Matching (composer_imp.criteria): within ε, the std of the dense accuracy across seeds (one point with one seed).
    band = estimate_epsilon(dense)['value'] if len(dense) > 1 else DEFAULT_TOLERANCE
    print(f'\n{"run":<18}{"seed":>5}{"levels":>8}{"train steps":>13}{"compute":>12}{"sweep share":>13}{"remaining":>11}'
          f'{"acc":>9}{"dense":>9}{"matching levels":>17}  ratios')
    for name, runs in results.items():
        for seed, rows in enumerate(runs):
            last = rows[-1]
            sweep = sum(r['compute'] - r['steps'] for r in rows)
            matching = sum(is_matching(1 - r['accuracy'], 1 - rows[0]['accuracy'], band) for r in rows[1:])
            ratios = ', '.join(f'{r["ratio"]:.3g}' for r in rows[1:])
            print(f'{name:<18}{seed:>5}{len(rows) - 1:>8}{last["cumulative_steps"]:>13}{last["cumulative_compute"]:>12.1f}'
                  f'{sweep / last["cumulative_compute"]:>12.2%}{100 * last["weights_remaining"]:>10.1f}%'
                  f'{100 * last["accuracy"]:>8.2f}%{100 * rows[0]["accuracy"]:>8.2f}%{matching:>11}/{len(rows) - 1:<5}'
                  f'  {ratios}')
    for name in results:
        print()
        if name != 'fixed':
            pairs = list(zip(results['fixed'], results[name]))
            steps = [a[-1]['cumulative_steps'] / f[-1]['cumulative_steps'] for f, a in pairs]
            compute = [a[-1]['cumulative_compute'] / f[-1]['cumulative_compute'] for f, a in pairs]
            print(f'{name}/fixed per seed: training steps {", ".join(f"{x:.2f}" for x in steps)}; compute with sweeps '
                  f'{", ".join(f"{x:.2f}" for x in compute)} (mean {statistics.fmean(compute):.2f}, target <= 0.50)')
        final = [rows[-1]['accuracy'] for rows in results[name]]
        gap = statistics.fmean(dense) - statistics.fmean(final)
        print(f'{name} final accuracy {100 * statistics.fmean(final):.2f}% vs dense {100 * statistics.fmean(dense):.2f}% '
              f'(band {100 * band:.2f} points): {"matching" if is_matching(gap, 0.0, band) else "NOT matching"}')
    labelled = {f'{name} seed {i}': rows for name, runs in results.items() for i, rows in enumerate(runs)}
    print(plot_accuracy_vs_compute(labelled, os.path.join(args.out, 'accuracy_vs_compute.png')))


if __name__ == '__main__':
    main()
