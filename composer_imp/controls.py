"""Controls: branches over a finished IMP run that tell a winning ticket from luck (OpenLTH's ``lottery/branch``).

For a finished level L with mask ``m_L``, each control builds the level's Trainer with the same recipe
(``make_trainer``, same τ, optimizer state, LR schedule and data order), changes one thing, and trains:

* ``random_mask``: a random mask with the same number of kept weights in every layer as ``m_L``, on ``w_τ``;
* ``reinit`` (OpenLTH's ``randomly_reinitialize``, the standard control): a whole fresh model from the model's
  own initializer with another seed, ``m_L`` applied;
* ``shuffle``: ``w_τ`` with the *kept* weights of each layer permuted among the kept positions (same
  per-layer values and mask, their placement destroyed).

Each result goes to ``level_XX/controls/KIND.json`` with the per-layer non-zero counts the control started training
with (after the mask is applied)
(resumable: finished controls are skipped). Controls read the run folder and write only under ``controls/``.

Example:
    >>> rows = run_controls(make_trainer, 'runs/mine', levels=[3, 6], kinds=['random_mask', 'reinit'])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import torch
from composer.utils import dist

from composer_imp.run_folder import RunFolder, atomic_write_text
from composer_imp.data_order import branch_data_seed
from composer_imp.lifecycle import MakeTrainer, build_level_trainer, fit_level, imp_trainer_args
from composer_imp.rank_zero import held_on_rank0, log_rank0, on_rank0
from composer_imp.masks import Mask, unwrap_model

__all__ = ['CONTROLS', 'random_mask_like', 'shuffle_kept_weights', 'run_control', 'run_controls']

CONTROLS = ('random_mask', 'reinit', 'shuffle')
_REINIT_SEED_OFFSET = 7919  # the reinit control's model is drawn from seed + this, never the run's own init


def random_mask_like(mask: Mapping[str, torch.Tensor], seed: int = 0) -> Mask:
    """A uniformly random mask keeping as many weights in each layer as ``mask`` does."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in mask.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=g)[:int(m.sum())]] = True
        out[name] = flat.view_as(m)
    return out


@torch.no_grad()
def shuffle_kept_weights(model: torch.nn.Module, mask: Mapping[str, torch.Tensor], seed: int = 0) -> None:
    """Permute each masked layer's kept weights among its kept positions (pruned positions untouched)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(unwrap_model(model).named_parameters())
    for name, m in mask.items():
        p = params[name]
        flat = p.detach().flatten().clone()  # logical order, whatever the memory format (ChannelsLast)
        kept = m.flatten().nonzero().squeeze(1).to(p.device)
        flat[kept] = flat[kept][torch.randperm(len(kept), generator=g).to(p.device)]
        p.copy_(flat.view(p.shape))


def run_control(make_trainer: MakeTrainer, save_folder: str, level: int, kind: str, seed: int = 0) -> dict:
    """Train control ``kind`` for finished ``level`` of the run in ``save_folder``; returns (and writes) its row."""
    if kind not in CONTROLS:
        raise ValueError(f'Unknown control {kind!r}; valid: {list(CONTROLS)}.')
    folder = RunFolder(save_folder)
    if not folder.is_done(level) or level < 1:
        raise ValueError(f'Controls branch from a finished pruned level; {folder.level_dir(level)} is not one.')
    path = folder.control(level, kind)
    dense = on_rank0(lambda: folder.verified_row(0))
    # What the control is made from: reused only while the rewind point and the ticket's mask are the same files.
    made_from = {'rewind.pt': dense['manifest']['rewind.pt'],
                 'mask.pt': on_rank0(lambda: folder.verified_row(level, files=False))['manifest']['mask.pt']}
    done = on_rank0(lambda: json.load(open(path)) if os.path.isfile(path) else None)
    if done is not None and done.get('made_from') == made_from and done.get('seed') == seed:
        return done
    ticket = on_rank0(lambda: folder.verified_mask(level))
    run_seed, run_order, data_order = on_rank0(lambda: (folder.recorded_seed(), folder.recorded_data_seed(),
                                                        folder.recorded_imp()['data_order']))
    order = branch_data_seed(run_order, level, data_order)  # the ticket level's own data order
    mask = random_mask_like(ticket, seed) if kind == 'random_mask' else ticket
    fresh = None
    if kind == 'reinit':
        # The model's own initializer under another seed: built like level 0 (nothing loaded), weights kept.
        trainer, _ = build_level_trainer(make_trainer, 0, run_seed + _REINIT_SEED_OFFSET + seed, {})
        fresh = {k: v.detach().clone() for k, v in unwrap_model(trainer.state.model).state_dict().items()}
        trainer.close()
    args = imp_trainer_args(folder, level, None, 'control', data_shift=order - run_order)
    trainer, imp = build_level_trainer(make_trainer, level, run_seed, args, order)
    model = unwrap_model(trainer.state.model)
    if fresh is not None:
        model.load_state_dict(fresh)
    elif kind == 'shuffle':
        shuffle_kept_weights(model, mask, seed)
    result = fit_level(trainer, imp, level, mask, folder.rewind, imp.rewind_step(trainer.state))
    row = {'level': level, 'kind': kind, 'seed': seed, 'accuracy': result.row['accuracy'], 'loss': result.row['loss'],
           'eval': result.row['eval'], 'weights_remaining': result.row['weights_remaining'],
           'nonzero': result.row['nonzero_at_start'], 'mask_kept': {k: int(m.sum()) for k, m in mask.items()},
           'dense_accuracy': dense.get('accuracy'), 'made_from': made_from}
    if dist.get_global_rank() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(json.dumps(row, indent=2), path)
    dist.barrier()
    return row


def run_controls(make_trainer: MakeTrainer, save_folder: str, levels: Sequence[int], kinds: Sequence[str],
                 seed: int = 0) -> list[dict]:
    """Every control in ``kinds`` for every finished level in ``levels``; logs a line per control."""
    unknown = [k for k in kinds if k not in CONTROLS]
    if unknown:
        raise ValueError(f'Unknown controls {unknown}; valid: {list(CONTROLS)}.')
    folder = RunFolder(save_folder)
    rows = []
    with held_on_rank0(folder.lock('controls')):  # controls train in the run's folder: not beside another process
        for level in levels:
            ticket = on_rank0(lambda: folder.verified_row(level, files=False))  # run_control verifies what it reads
            for kind in kinds:
                row = run_control(make_trainer, save_folder, level, kind, seed)
                rows.append(row)
                log_rank0('control %s at level %02d (%.1f%% weights): accuracy %.2f%% (ticket %.2f%%)', kind, level,
                          100 * row['weights_remaining'], 100 * row['accuracy'], 100 * ticket['accuracy'])
    return rows
