"""Controls that tell a winning ticket from luck (from the lottery-ticket literature; not in the paper).

For a level L with mask ``m_L``, each control trains from the rewind point exactly like the level did
(same recipe, same τ, same optimizer state, LR and data order), changing one thing:

* ``random_mask``: a random mask with the same number of kept weights in every layer as ``m_L``;
* ``reinit``: the ticket's mask on re-initialized weights: each layer's rewind-point weights are randomly
  permuted within the layer (same per-layer value distribution, the specific values destroyed).

A ticket that beats both is not explained by its per-layer sparsity or its weight distribution alone.
Results go to ``level_XX/controls/KIND.json`` (resumable: finished controls are skipped).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Mapping

import torch
from composer import Callback, Trainer
from composer.core import Event
from composer.utils import dist

from composer_imp.artifacts import atomic_write_text
from composer_imp.masks import Mask, load_mask, sparsity_report, unwrap_model

__all__ = ['CONTROLS', 'random_mask_like', 'PermuteWeights']

CONTROLS = ('random_mask', 'reinit')


def random_mask_like(mask: Mapping[str, torch.Tensor], seed: int = 0) -> Mask:
    """A uniformly random mask keeping as many weights in each layer as ``mask`` does."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in mask.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=g)[:int(m.sum())]] = True
        out[name] = flat.view_as(m)
    return out


class PermuteWeights(Callback):
    """At FIT_START (after the rewind point is loaded), permute each named weight's values within its layer."""

    def __init__(self, names, seed: int = 0):
        self.names, self.seed = list(names), seed

    def fit_start(self, state, logger) -> None:
        g = torch.Generator().manual_seed(self.seed)
        params = dict(unwrap_model(state.model).named_parameters())
        with torch.no_grad():
            for name in self.names:
                p = params[name]
                perm = torch.randperm(p.numel(), generator=g).to(p.device)
                p.copy_(p.detach().flatten()[perm].view_as(p))
        # KeepMask ran before this callback at FIT_START; re-apply it so pruned weights are zero from step 1.
        for algorithm in state.algorithms:
            if type(algorithm).__name__ == 'KeepMask':
                algorithm.apply(Event.FIT_START, state, logger)


def run_control(orchestrator, level: int, kind: str, seed: int = 0) -> dict:
    """Train control ``kind`` for ``level`` of ``orchestrator``'s run; returns (and writes) its result row."""
    folder = orchestrator.folder
    path = os.path.join(folder.level_dir(level), 'controls', f'{kind}.json')
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    ticket = load_mask(folder.mask(level))
    mask = random_mask_like(ticket, seed) if kind == 'random_mask' else ticket
    from composer_imp.orchestrator import _eval_numbers, _restart_dataset_epochs, apply_model_surgery
    model = orchestrator.model_fn()
    user_kwargs = orchestrator.trainer_kwargs_fn(model, level)
    apply_model_surgery(model, user_kwargs.get('algorithms'), user_kwargs.get('optimizers'))
    kwargs = orchestrator._trainer_kwargs(user_kwargs, model, level, mask)
    for key in ('save_folder', 'autoresume', 'save_interval', 'save_num_checkpoints_to_keep', 'save_overwrite'):
        kwargs.pop(key, None)  # controls are short runs: no level checkpoints
    kwargs['run_name'] = f'{kwargs["run_name"]}-{kind}'
    if kind == 'reinit':
        kwargs['callbacks'] = kwargs['callbacks'] + [PermuteWeights(mask, seed)]
    _restart_dataset_epochs(kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='KeepMask is not in the state_dict')
        trainer = Trainer(**kwargs)
    trainer.fit()
    values = {k: float(v) for k, v in trainer.state.eval_metric_values.items()}
    trainer.close()
    accuracy, _ = _eval_numbers(values)
    row = {'level': level, 'kind': kind, 'seed': seed, 'accuracy': accuracy, 'eval': values,
           'weights_remaining': sparsity_report(mask)['weights_remaining']}
    if dist.get_global_rank() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(json.dumps(row, indent=2), path)
    dist.barrier()
    return row
