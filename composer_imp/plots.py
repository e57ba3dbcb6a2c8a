"""Figures from IMP run summaries (matplotlib PNGs).

``accuracy_vs_compute.png`` (like the paper's Figure 4): eval accuracy against weights remaining, and
against cumulative compute in training-step equivalents (training steps + sweep forward passes / 3),
one line per run — e.g. fixed-20% vs adaptive.

    python -m composer_imp.plots runs/fixed runs/adaptive -o accuracy_vs_compute.png
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from composer_imp.artifacts import RunFolder  # noqa: E402

__all__ = ['plot_accuracy_vs_compute']


def plot_accuracy_vs_compute(runs: Mapping[str, Sequence[dict]], path: str) -> str:
    """Draw accuracy vs weights remaining and vs cumulative compute for each labelled run; return ``path``."""
    fig, (ax_w, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rows in runs.items():
        acc = [100 * r['accuracy'] for r in rows if r.get('accuracy') is not None]
        remaining = [100 * r['weights_remaining'] for r in rows if r.get('accuracy') is not None]
        compute = [r.get('cumulative_compute', r['cumulative_steps']) for r in rows if r.get('accuracy') is not None]
        ax_w.plot(remaining, acc, marker='o', label=label)
        ax_c.plot(compute, acc, marker='o', label=label)
    dense = next(iter(runs.values()))[0].get('accuracy')
    for ax in (ax_w, ax_c):
        if dense is not None:
            ax.axhline(100 * dense, color='grey', ls=':', lw=1, label='dense accuracy')
        ax.set_ylabel('eval accuracy (%)')
        ax.grid(alpha=0.3)
        ax.legend()
    ax_w.set_xscale('log')
    ax_w.invert_xaxis()
    ax_w.set_xlabel('weights remaining (%)')
    ax_w.set_title('Accuracy vs sparsity')
    ax_c.set_xlabel('cumulative compute (training-step equivalents)')
    ax_c.set_title('Accuracy vs compute spent')
    fig.suptitle('IMP: accuracy against weights remaining and compute')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Plot accuracy vs weights remaining and compute for IMP runs.')
    parser.add_argument('runs', nargs='+', help='save_folders of IMP runs')
    parser.add_argument('-o', '--output', default='accuracy_vs_compute.png')
    args = parser.parse_args(argv)
    runs = {}
    for folder in args.runs:
        run = RunFolder(folder)
        if not os.path.isfile(run.summary):
            parser.error(f'{folder} is not an IMP run: {run.summary} is missing.')
        runs[os.path.basename(os.path.normpath(folder))] = run.read_summary()
    print(plot_accuracy_vs_compute(runs, args.output))


if __name__ == '__main__':
    main()
