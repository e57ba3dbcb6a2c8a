"""Appendix D experiments: why level 0 and level 1 may not be linearly connected. Branches over a finished run.

* :func:`instability` — the dense network's instability at the rewind point τ (Frankle et al.'s linear mode
  connectivity test): two copies of the dense network trained from ``w_τ`` with different data orders, and the
  error barrier on the line between them. A barrier above the tolerance means SGD noise alone separates solutions
  trained from τ, so level 0 and level 1 need not be connected; run it on runs with different τ to choose one.
* :func:`perturbation` — perturb ``w_τ`` by a Gaussian direction over the prunable weights with the norm of
  ``(1 - m_1) ⊙ w_τ`` (the distance the level-1 projection moves ``w_τ``), train the dense network from there with
  the run's own data order, and measure its connectivity to the level-0 solution — beside the level-1 solution's.

Each trains through the level lifecycle of :mod:`composer_imp.level_loop` with the run's ``make_trainer`` (its τ,
optimizer state, LR schedule), writes ``save_folder/stability/{instability,perturbation}.json`` and a figure, and
reuses trained copies on a re-run (``stability/<name>/weights.pt``).

Example:
    >>> result = instability(make_trainer, 'runs/mine', tolerance=0.01)          # doctest: +SKIP
    >>> result['barrier'], result['stable']                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import torch
from composer.utils import dist

from composer_imp.run_folder import RunFolder, atomic_torch_save, atomic_write_text, sha256
from composer_imp.connectivity import DEFAULT_BETAS, linear_path
from composer_imp.criteria import DEFAULT_TOLERANCE, is_connected
from composer_imp.data_order import branch_data_seed
from composer_imp.lifecycle import MakeTrainer, build_level_trainer, fit_level, imp_trainer_args
from composer_imp.rank_zero import held_on_rank0, on_rank0
from composer_imp.masks import full_mask, unwrap_model
from composer_imp.plots import plot_stability

__all__ = ['instability', 'perturbation']


def _dense_branch(make_trainer: MakeTrainer, folder: RunFolder, name: str, data_seed: int,
                  change: Callable[[torch.nn.Module], None] = lambda model: None) -> tuple[dict, torch.nn.Module, Any]:
    """Train the dense network from the run's rewind point (``change`` applied to ``w_τ`` first) with the data order
    of ``data_seed``; returns (its weights, the model as the Trainer held it, the Trainer's eval loader). A copy
    trained before is reused."""
    path = folder.stability_weights(name)
    # A copy is reused only while its own bytes and the rewind point it was trained from are the ones recorded.
    made_from = on_rank0(lambda: folder.verified_row(0, files=False))['manifest']['rewind.pt']  # files: _check
    record = folder.stability_record(name)
    seed = on_rank0(folder.recorded_seed)
    shift = data_seed - on_rank0(folder.recorded_data_seed)
    trainer, imp = build_level_trainer(make_trainer, 0, seed, imp_trainer_args(folder, 0, None, f'stability-{name}',
                                                                               data_shift=shift), data_seed)
    model = unwrap_model(trainer.state.model)
    loader = trainer.state.evaluators[0].dataloader.dataloader
    change(model)  # also on a re-run: it may record what it measures of w_τ (the perturbation's norm)
    reusable = on_rank0(lambda: os.path.isfile(path) and os.path.isfile(record) and
                        json.load(open(record)) == {'rewind.pt': made_from, 'weights.pt': sha256(path)})
    if reusable:
        trainer.close()
        return on_rank0(lambda: torch.load(path, map_location='cpu', weights_only=True)), model, loader
    # Level 0 semantics (dense, no mask kept) without saving a rewind point: the run's own stays untouched.
    result = fit_level(trainer, imp, 0, full_mask(model, imp.ignore), None, imp.rewind_step(trainer.state))
    def save() -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_torch_save(result.weights, path)
        atomic_write_text(json.dumps({'rewind.pt': made_from, 'weights.pt': sha256(path)}), record)
    on_rank0(save)
    return result.weights, model, loader


def _write(folder: RunFolder, name: str, result: dict) -> dict:
    if dist.get_global_rank() == 0:
        os.makedirs(folder.stability_dir, exist_ok=True)
        atomic_write_text(json.dumps(result, indent=2), folder.stability_result(name))
        plot_stability(result, folder.stability_result(name, 'png'))
    return result


def _check(folder: RunFolder, levels: int) -> None:
    if not all(folder.is_done(level) for level in range(levels + 1)):
        raise ValueError(f'{folder.root} needs finished levels 0..{levels} (level_XX/level.json) for this experiment; '
                         'finish the run first (re-run the same command: it resumes).')
    for level in range(levels + 1):
        folder.verified_row(level)  # refuses a level whose files changed since it finished


def instability(make_trainer: MakeTrainer, save_folder: str, data_seeds: Sequence[int] = (1, 2),
                betas: Sequence[float] = DEFAULT_BETAS, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Two dense copies trained from ``w_τ`` with the data orders of ``data_seeds``; the barrier between them.

    Returns (and writes to ``stability/instability.json``) ``{'tau', 'data_seeds', 'errors' (the copies'), 'path':
    {'betas', 'errors', 'barrier'}, 'barrier', 'tolerance', 'stable'}``; ``stable`` when the barrier ≤ ``tolerance``.
    """
    folder = RunFolder(save_folder)
    on_rank0(lambda: _check(folder, 0))
    if len(data_seeds) != 2 or len(set(data_seeds)) != 2 or 0 in data_seeds:
        raise ValueError(f'instability needs two different, non-zero data seeds (offsets from the run\'s own order); '
                         f'got {list(data_seeds)}.')
    own = on_rank0(folder.recorded_data_seed)  # a replicate's copies draw orders other than its own
    betas = sorted(set(float(b) for b in betas))
    with held_on_rank0(folder.lock('stability')):
        copies = [_dense_branch(make_trainer, folder, f'copy_seed{s}', own + s) for s in data_seeds]
    (a, model, loader), (b, _, _) = copies
    path = linear_path(model, a, b, loader, betas)
    return _write(folder, 'instability', {
        'experiment': 'instability', 'tau': folder.read_row(1)['start_step'] if folder.is_done(1) else None,
        'data_seeds': list(data_seeds), 'errors': [path['errors'][0], path['errors'][-1]], 'path': path,
        'barrier': path['barrier'], 'tolerance': tolerance, 'stable': is_connected(path['barrier'], tolerance)})


def perturbation(make_trainer: MakeTrainer, save_folder: str, seed: int = 0, betas: Sequence[float] = DEFAULT_BETAS,
                 tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Perturb ``w_τ`` by a Gaussian direction over the prunable weights with norm ``‖(1 - m_1) ⊙ w_τ‖``, train the
    dense network from there (level 0's data order), and compare its connectivity to level 0 with level 1's.

    Returns (and writes to ``stability/perturbation.json``) ``{'norm', 'perturbed': {'betas', 'errors', 'barrier'}
    (path w_0 → perturbed solution), 'level_1': {...} (path w_0 → w_1), 'tolerance', 'connected'}``.
    """
    folder = RunFolder(save_folder)
    on_rank0(lambda: _check(folder, 1))
    mask = on_rank0(lambda: folder.verified_mask(1))
    norm: list[float] = []

    def perturb(model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            distance = torch.sqrt(sum(((~mask[k]).to(params[k].dtype) * params[k].detach().cpu()).pow(2).sum()
                                      for k in mask))
            direction = {k: torch.randn(params[k].shape, generator=generator) for k in mask}
            scale = distance / torch.sqrt(sum(d.pow(2).sum() for d in direction.values()))
            for k, d in direction.items():
                params[k].add_((scale * d).to(params[k].device, params[k].dtype))
        norm.append(float(distance))

    betas = sorted(set(float(b) for b in betas))
    level0_order = on_rank0(lambda: branch_data_seed(folder.recorded_data_seed(), 0, folder.recorded_imp()['data_order']))
    with held_on_rank0(folder.lock('stability')):
        perturbed, model, loader = _dense_branch(make_trainer, folder, f'perturbed_seed{seed}', level0_order, perturb)
    dense, level1 = on_rank0(lambda: (folder.verified_weights(0), folder.verified_weights(1)))
    to_perturbed = linear_path(model, dense, perturbed, loader, betas)
    to_level1 = linear_path(model, dense, level1, loader, betas)
    return _write(folder, 'perturbation', {
        'experiment': 'perturbation', 'seed': seed, 'norm': norm[0] if norm else None, 'perturbed': to_perturbed,
        'level_1': to_level1, 'tolerance': tolerance, 'connected': is_connected(to_perturbed['barrier'], tolerance)})
