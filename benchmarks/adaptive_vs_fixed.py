"""Fixed-ratio IMP vs AdaptiveIMP to the same imp.target_sparsity, same seed, side by side.

    python benchmarks/adaptive_vs_fixed.py -f yamls/quickstart.yaml --target 0.9 [key=value ...]

Prints, for each: levels trained, training steps, compute with sweeps (training-step equivalents),
final weights remaining, final accuracy vs dense, and the ratio adaptive/fixed; writes
accuracy_vs_compute.png comparing both.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from composer_imp.config import load_config  # noqa: E402
from composer_imp.plots import plot_accuracy_vs_compute  # noqa: E402
from composer_imp.recipes import run_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-f', '--file', default='yamls/quickstart.yaml')
    parser.add_argument('--target', type=float, default=0.9, help='imp.target_sparsity for both runs')
    parser.add_argument('--out', default='runs/adaptive_vs_fixed')
    parser.add_argument('overrides', nargs='*')
    args = parser.parse_args()

    results = {}
    for name, extra in (('fixed', ['imp.adaptive.enabled=false']), ('adaptive', ['imp.adaptive.enabled=true'])):
        cfg = load_config(args.file, [*args.overrides, *extra, f'imp.target_sparsity={args.target}', 'imp.levels=40',
                                      f'save_folder={os.path.join(args.out, name)}', 'progress_bar=false'])
        results[name] = run_config(cfg, overwrite=True)

    print(f'\n{"run":<10}{"levels":>8}{"train steps":>13}{"compute":>12}{"sweep share":>13}{"remaining":>11}{"acc":>9}{"dense":>9}')
    for name, rows in results.items():
        last = rows[-1]
        sweep = sum(r['compute'] - r['steps'] for r in rows)
        print(f'{name:<10}{len(rows) - 1:>8}{last["cumulative_steps"]:>13}{last["cumulative_compute"]:>12.1f}'
              f'{sweep / last["cumulative_compute"]:>12.2%}{100 * last["weights_remaining"]:>10.1f}%'
              f'{100 * last["accuracy"]:>8.2f}%{100 * rows[0]["accuracy"]:>8.2f}%')
    f, a = results['fixed'][-1], results['adaptive'][-1]
    print(f'\nadaptive/fixed: training steps {a["cumulative_steps"] / f["cumulative_steps"]:.2f}, '
          f'compute with sweeps {a["cumulative_compute"] / f["cumulative_compute"]:.2f} (target <= 0.50)')
    print(plot_accuracy_vs_compute(results, os.path.join(args.out, 'accuracy_vs_compute.png')))


if __name__ == '__main__':
    main()
