"""Figures from IMP run summaries (matplotlib PNGs).

``accuracy_vs_compute.png`` (like the paper's Figure 4): eval accuracy against weights remaining, and
against cumulative compute in training-step equivalents (training steps + sweep forward passes / 3),
one line per run — e.g. fixed-20% vs adaptive.

    python -m composer_imp.plots runs/fixed runs/adaptive -o accuracy_vs_compute.png
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Mapping, Sequence

import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from composer_imp.run_folder import RunFolder, atomic_write_text

__all__ = ['subplots', 'plot_accuracy_vs_compute', 'plot_landscape_report', 'plot_replicates', 'plot_stability',
           'draw_plane', 'draw_successive_paths']


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple = (6.4, 4.8), **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` without pyplot: a :class:`~matplotlib.figure.Figure` drawn by the Agg canvas, so the package
    never switches the user's matplotlib backend nor keeps figures open in pyplot's registry."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_accuracy_vs_compute(runs: Mapping[str, Sequence[dict]], path: str) -> str:
    """Draw accuracy vs weights remaining and vs cumulative compute for each labelled run; return ``path``."""
    fig, (ax_w, ax_c) = subplots(1, 2, figsize=(11, 4.2))
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
    return path


def plot_landscape_report(analysis: dict, out: str) -> list[str]:
    """Figures 5 and 2 of the paper from an ``analysis.json`` dict, plus ``report.md``; returns the written paths."""

    levels = analysis['levels']
    dense = levels[0]['error']
    tol = analysis['tolerance']
    paths = []

    fig, ax = subplots(figsize=(6, 4))
    ax.plot([100 * r['weights_remaining'] for r in levels], [100 * r['error'] for r in levels], marker='o', label='IMP level')
    ax.axhline(100 * (dense + tol), color='green', ls='--', label=f'matching threshold (dense + {100 * tol:g} pts)')
    ax.set_xscale('log')
    ax.invert_xaxis()
    ax.set_xlabel('weights remaining (%)')
    ax.set_ylabel('test error (%)')
    ax.set_title('Test error vs weights remaining')
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(os.path.join(out, 'error_vs_weights_remaining.png'))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)

    fig, (ax, zoom) = subplots(1, 2, figsize=(12, 4))
    for s in analysis['successive']:
        x = [s['from'] + b * (s['to'] - s['from']) for b in s['betas']]
        for a in (ax, zoom):
            a.plot(x, [100 * e for e in s['errors']], color='tab:green' if s['connected'] else 'tab:red', marker='.')
    for a in (ax, zoom):
        a.axhline(100 * (dense + tol), color='black', ls=':', label='matching threshold')
        a.set_xlabel('level (linear path between successive level solutions)')
        a.set_ylabel('test error (%)')
        a.grid(alpha=0.3)
    ax.plot([], [], color='tab:green', label='connected (barrier ≤ tolerance)')
    ax.plot([], [], color='tab:red', label='barrier > tolerance')
    ax.legend()
    ax.set_title('Error along paths between successive levels')
    zoom.set_ylim(max(0.0, 100 * (dense - 2 * tol)), 100 * (dense + 3 * tol))
    zoom.set_title('Zoom around the matching threshold')
    paths.append(os.path.join(out, 'successive_paths.png'))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)

    paths.append(_pairwise_figure(analysis['pairwise'], dense + tol, tol, os.path.join(out, 'pairwise.png'),
                                  'Linear paths between every pair of level solutions'))

    if analysis.get('planes'):
        planes = analysis['planes']
        cols = min(4, len(planes))
        rows_n = (len(planes) + cols - 1) // cols
        fig, axes = subplots(rows_n, cols, figsize=(4.2 * cols, 5.6 * rows_n), squeeze=False)
        for ax in axes.flat[len(planes):]:
            ax.axis('off')
        for ax, plane in zip(axes.flat, planes):
            fig.colorbar(draw_plane(ax, plane, dense + tol), ax=ax, label='test error (%)')
            ax.set_title(f'level {plane["level"]} → {plane["level"] + 1}')
        fig.suptitle('Error on the plane through w_L, its projection and w_L+1 (dotted: matching error)')
        paths.append(os.path.join(out, 'planes.png'))
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=110)

    lines = ['# IMP error landscape', '',
             f'Matching tolerance {100 * tol:g} points over the dense test error {100 * dense:.2f}%; '
             f'BatchNorm statistics {"recomputed" if analysis["recalibrate_bn"] else "interpolated"}.', '',
             *_verdict_lines(analysis['verdict']), '',
             '| level | weights remaining | test error | matching |', '|---|---|---|---|']
    lines += [f'| {r["level"]} | {100 * r["weights_remaining"]:.2f}% | {100 * r["error"]:.2f}% | {r["matching"]} |' for r in levels]
    lines += ['', '| path | error barrier | max error | connected | both matching |', '|---|---|---|---|---|']
    lines += [f'| {s["from"]} → {s["to"]} | {100 * s["barrier"]:.2f} pts | {100 * s["max_error"]:.2f}% | {s["connected"]} | '
              f'{s["both_matching"]} |' for s in analysis['successive']]
    lines += _lcs_lines(analysis.get('lcs') or [], tol)
    lines += [''] + [f'![{os.path.basename(p)}]({os.path.basename(p)})' for p in paths]
    paths.append(os.path.join(out, 'report.md'))
    atomic_write_text('\n'.join(lines) + '\n', paths[-1])
    return paths


def _lcs_lines(lcs: list, tol: float) -> list[str]:
    """LCS-set membership (Definition 2.1) of the projection and of the next solution, as markdown."""
    if not lcs:
        return []

    def mark(end: dict, key: str) -> str:
        return '–' if end.get(key) is None else ('in' if end[key] else 'out')

    eps = lcs[0].get('train_epsilon')
    train = f'training loss, ε = {eps:.4f} (the dense run\'s)' if eps is not None and 'train' in lcs[0]['projection'] \
        else 'training loss: pass training data to measure it'
    lines = ['', f'**LCS-set of w_L** (Definition 2.1: within E(w_L) + ε at the point and along the line from w_L), in '
                 f'test error (ε = {100 * tol:.2f} points) and in {train}:', '',
             '| L | projection m_(L+1) ⊙ w_L: test | train | w_(L+1): test | train |', '|---|---|---|---|---|']
    lines += [f'| {e["level"]} | {mark(e["projection"], "test")} | {mark(e["projection"], "train")} | '
              f'{mark(e["next"], "test")} | {mark(e["next"], "train")} |' for e in lcs]
    return lines


def _verdict_lines(verdict: dict) -> list[str]:
    """The "connected iff matching" table of :func:`composer_imp.connectivity.iff_verdict`, as markdown."""
    holds = {True: 'holds', False: 'does NOT hold', None: 'not judged yet (no pair of pruned levels)'}[verdict['holds']]
    lines = [f'**Connected iff matching** over successive pairs of pruned levels (L ≥ 1): **{holds}**.', '',
             '| pair | both matching | connected | agree |', '|---|---|---|---|']
    lines += [f'| {p["from"]} → {p["to"]} | {p["matching"]} | {p["connected"]} | {p["agree"]} |' for p in verdict['pairs']]
    dense = verdict.get('dense_pair')
    if dense:
        lines += ['', f'Dense → level 1 (judged apart: the dense network may not be stable at τ): both matching '
                      f'{dense["matching"]}, connected {dense["connected"]}.']
    return lines


def _pairwise_figure(pairwise: dict, threshold: float, tol: float, path: str, title: str) -> str:
    """Appendix C's heatmap — the maximum test error along the path between two levels, darkest at (and below) the
    matching threshold — beside the error barrier of the same paths."""
    levels = pairwise['levels']
    fig, (ax_max, ax_bar) = subplots(1, 2, figsize=(11.5, 4.8))
    for ax, key, label, low in ((ax_max, 'max_error', 'max test error along the path (%)', 100 * threshold),
                                (ax_bar, 'barrier', 'error barrier (percentage points)', 0.0)):
        matrix = np.array([[np.nan if v is None else 100 * v for v in row] for row in pairwise[key]])
        top = np.nanmax(matrix) if np.isfinite(matrix).any() else low
        image = ax.imshow(matrix, cmap='viridis', vmin=low, vmax=max(top, low + (100 * tol or 1e-3)))
        ax.set_xticks(range(len(levels)), levels)
        ax.set_yticks(range(len(levels)), levels)
        ax.set_xlabel('level')
        ax.set_ylabel('level')
        fig.colorbar(image, ax=ax, label=label)
    ax_max.set_title(f'Max error on the path (darkest: ≤ matching threshold {100 * threshold:.2f}%)', fontsize=10)
    ax_bar.set_title(f'Error barrier (tolerance {100 * tol:.2f} points)', fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_stability(result: dict, path: str) -> str:
    """The error along the linear paths of an Appendix D experiment (:mod:`composer_imp.stability`)."""
    if result['experiment'] == 'instability':
        seeds = result['data_seeds']
        curves = [(f'dense copies from w_τ, data orders {seeds[0]} and {seeds[1]}', result['path'], 'tab:blue')]
        title = f'Instability of the dense network at τ = {result["tau"]} (barrier {100 * result["barrier"]:.2f} points)'
        xlabel = 'β on the line between the two copies'
    else:
        curves = [(f'w_0 → dense from w_τ + perturbation (norm {result["norm"]:.3g})', result['perturbed'], 'tab:red'),
                  ('w_0 → w_1 (level 1)', result['level_1'], 'tab:green')]
        title = 'Perturbing w_τ by the level-1 projection\'s distance'
        xlabel = 'β on the line from the level-0 solution'
    fig, ax = subplots(figsize=(6.5, 4.2))
    for label, curve, color in curves:
        ax.plot(curve['betas'], [100 * e for e in curve['errors']], marker='o', color=color,
                label=f'{label}: barrier {100 * curve["barrier"]:.2f} pts')
    start = curves[0][1]['errors'][0]
    ax.axhline(100 * (start + result['tolerance']), color='black', ls=':', label=f'start + tolerance ({100 * result["tolerance"]:g} pts)')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('test error (%)')
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def draw_plane(ax: Any, plane: Mapping, threshold: float) -> Any:
    """Figure 3 on ``ax``: the test error (%) on one plane of :func:`composer_imp.connectivity.plane_slice`, the
    ``threshold`` error contour (dotted), the axial line and the three networks; returns the filled contour set for
    a colorbar. As the paper draws it: orthogonal axes, the projection and w_L+1 at fixed places on the axial line,
    the orthogonal direction drawn twice as long for visibility."""
    grid = np.array(plane['errors']) * 100
    mesh = ax.contourf(plane['xs'], plane['ys'], grid, levels=20, cmap='viridis')
    ax.contour(plane['xs'], plane['ys'], grid, levels=[100 * threshold], colors='black', linestyles=':')
    ax.plot([], [], color='black', ls=':', label=f'matching error {100 * threshold:.2f}%')
    ax.axhline(0, color='purple', ls='--', lw=1.2, label=f'axial subspace of m_{plane["level"] + 1}')
    anchor = plane['anchors']
    for key, marker, color, name in (('w_L', '^', 'grey', f'w_{plane["level"]}'),
                                     ('projection', 'x', 'orange', 'projection m ⊙ w_L'),
                                     ('next', '^', 'orange', f'w_{plane["level"] + 1}')):
        ax.plot([anchor[key]['x']], [anchor[key]['y']], marker=marker, color=color, ms=10, mew=3, ls='',
                mec='black' if marker == '^' else color, label=f'{name}: {100 * anchor[key]["error"]:.2f}% error')
    ax.set_xlabel('along the axial line (|w_L+1 − projection| = 1)', fontsize=8)
    ax.set_ylabel('orthogonal, towards w_L (drawn × 2)', fontsize=8)
    ax.set_aspect(2, adjustable='box')
    ax.legend(fontsize=6, loc='upper center', bbox_to_anchor=(0.5, -0.2), ncol=2)
    return mesh


def draw_successive_paths(ax: Any, successive: Sequence[dict], not_connected: str = 'tab:red') -> None:
    """Figure 2 (left) on ``ax``: the test error (%) along each successive path at x = level + β, mean ± std over
    replicates, green where the pair is connected."""
    for s in successive:
        x = [s['from'] + b * (s['to'] - s['from']) for b in s['betas']]
        mean = np.array([100 * e['mean'] for e in s['errors']])
        std = np.array([100 * e['std'] for e in s['errors']])
        color = 'tab:green' if s['connected'] else not_connected
        ax.plot(x, mean, color=color, marker='.')
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)


def plot_replicates(result: dict, out: str) -> list[str]:
    """``replicates.png`` (error vs weights remaining, barriers; mean ± std over replicates) and ``replicates.md``."""
    levels, successive = result['levels'], result['successive']
    dense, tol = result['dense_error']['mean'], result['tolerance']
    name = 'ε' if tol == result['epsilon'] else 'tolerance'
    fig, (ax_e, ax_p, ax_b) = subplots(1, 3, figsize=(16, 4.4))
    x = [100 * r['weights_remaining']['mean'] for r in levels]
    ax_e.errorbar(x, [100 * r['error']['mean'] for r in levels], yerr=[100 * r['error']['std'] for r in levels],
                  marker='o', capsize=3, label=f'IMP levels (mean ± std, {len(result["replicates"])} replicates)')
    ax_e.axhspan(100 * (dense - tol), 100 * (dense + tol), color='grey', alpha=0.2, label=f'dense error ± {name} (matching)')
    ax_e.set_xscale('log')
    ax_e.set_xticks(x, [f'{v:.3g}' for v in x])  # one tick per level
    ax_e.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_e.invert_xaxis()
    ax_e.set_xlabel('weights remaining (%)')
    ax_e.set_ylabel('test error (%)')
    ax_e.set_title('Test error vs sparsity across replicates')
    draw_successive_paths(ax_p, successive)
    ax_p.axhline(100 * (dense + tol), color='black', ls=':', label=f'matching threshold (dense + {name})')
    ax_p.plot([], [], color='tab:green', label='connected (mean barrier ≤ tolerance)')
    ax_p.plot([], [], color='tab:red', label='not connected')
    ax_p.set_xlabel('level (linear path between successive level solutions)')
    ax_p.set_ylabel('test error (%)')
    ax_p.set_title('Error along successive paths (mean ± std)')
    if successive:
        names = [f'{s["from"]}→{s["to"]}' for s in successive]
        ax_b.bar(names, [100 * s['barrier']['mean'] for s in successive], yerr=[100 * s['barrier']['std'] for s in successive],
                 capsize=3, color=['tab:green' if s['connected'] else 'tab:red' for s in successive], label='error barrier (mean ± std)')
    ax_b.axhline(100 * tol, color='black', ls=':', label=f'{name} = {100 * tol:.2f} points')
    ax_b.set_xlabel('successive levels')
    ax_b.set_ylabel('error barrier (percentage points)')
    ax_b.set_title('Barriers of successive levels (green: connected)')
    for ax in (ax_e, ax_p, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle('IMP across replicates: matching and linear mode connectivity')
    fig.tight_layout()
    paths = [os.path.join(out, 'replicates.png')]
    fig.savefig(paths[0], dpi=120)
    paths.append(_pairwise_figure(result['pairwise'], dense + tol, tol, os.path.join(out, 'pairwise.png'),
                                  f'Linear paths between level solutions, mean over {len(result["replicates"])} replicates'))

    lines = ['# IMP across replicates', '',
             f'{len(result["replicates"])} replicates (seeds {result["seeds"]}); dense test error '
             f'{100 * dense:.2f}% ± {100 * result["dense_error"]["std"]:.2f}; ε = {100 * result["epsilon"]:.2f} points '
             f'(tolerance used: {100 * tol:.2f}).', '', *_verdict_lines(result['verdict']), '',
             '| level | weights remaining | test error (mean ± std) | matching | matching in |', '|---|---|---|---|---|']
    lines += [f'| {r["level"]} | {100 * r["weights_remaining"]["mean"]:.2f}% | {100 * r["error"]["mean"]:.2f}% ± '
              f'{100 * r["error"]["std"]:.2f} | {r["matching"]} | {100 * r["matching_fraction"]:.0f}% |' for r in levels]
    lines += ['', '| path | barrier (mean ± std) | connected | connected in | both matching |', '|---|---|---|---|---|']
    lines += [f'| {s["from"]} → {s["to"]} | {100 * s["barrier"]["mean"]:.2f} ± {100 * s["barrier"]["std"]:.2f} pts | '
              f'{s["connected"]} | {100 * s["connected_fraction"]:.0f}% | {s["both_matching"]} |' for s in successive]
    lines += ['', '![replicates.png](replicates.png)', '', '![pairwise.png](pairwise.png)']
    paths.append(os.path.join(out, 'replicates.md'))
    atomic_write_text('\n'.join(lines) + '\n', paths[-1])
    return paths


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
