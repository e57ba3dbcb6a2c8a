"""Appendix D experiments as branches over a finished run: the dense network's instability at τ, and w_τ perturbed
by the level-1 projection's distance."""

import json

import pytest
import torch

from composer_imp import IMP, find_ticket
from composer_imp.run_folder import sha256
from composer_imp.connectivity import error_barrier
from composer_imp.evaluate import evaluate
from composer_imp.masks import unwrap_model
from composer_imp.stability import instability, perturbation


def test_instability_and_perturbation_branch_from_the_rewind_point(tmp_path, make_trainer_factory, digits_loaders):
    make_trainer = make_trainer_factory(imp=lambda: IMP(ratio=0.5, rewind='5ba'), max_duration='1ep')
    rows = find_ticket(make_trainer, str(tmp_path), levels=1, seed=3)
    rewind = sha256(str(tmp_path / 'rewind' / 'rewind.pt'))
    fitted = len([r for r in make_trainer.records if r.end is not None])

    result = instability(make_trainer, str(tmp_path), betas=[0.0, 0.5, 1.0], tolerance=0.01)
    copies = [r for r in make_trainer.records if r.end is not None][fitted:]
    assert len(copies) == 2 and all(r.level == 0 and r.imp_args['load_path'].endswith('rewind.pt') for r in copies)
    assert all(torch.equal(copies[0].start[k], copies[1].start[k]) for k in copies[0].start), 'both start at w_τ'
    assert not torch.equal(copies[0].end['module.fc.weight'], copies[1].end['module.fc.weight']), 'other data orders'
    saved = [torch.load(tmp_path / 'stability' / f'copy_seed{s}' / 'weights.pt', weights_only=True) for s in (1, 2)]
    model = unwrap_model(make_trainer_factory()(0, 0, {}).state.model)  # a model with the run's parameter names
    own = [r['error'] for r in evaluate(model, saved, digits_loaders[1])]
    assert result['errors'] == own and result['path']['errors'][0] == own[0] and result['path']['errors'][-1] == own[1]
    assert result['barrier'] == error_barrier(result['path']['errors'], [0.0, 0.5, 1.0])
    assert result['stable'] == (result['barrier'] <= 0.01) and result['tau'] == rows[1]['start_step'] == 5
    assert json.loads((tmp_path / 'stability' / 'instability.json').read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / 'stability' / 'instability.png').stat().st_size > 10_000
    assert sha256(str(tmp_path / 'rewind' / 'rewind.pt')) == rewind, "the run's rewind point is untouched"

    result = perturbation(make_trainer, str(tmp_path), betas=[0.0, 0.5, 1.0])
    branch = [r for r in make_trainer.records if r.end is not None][fitted + 2:]
    assert len(branch) == 1
    w_tau, start = copies[0].start, branch[0].start
    mask = torch.load(tmp_path / 'level_01' / 'mask.pt', weights_only=True)
    # The perturbation moves the prunable weights of w_τ by exactly the distance the level-1 projection moves them.
    moved = torch.sqrt(sum((start[k] - w_tau[k]).pow(2).sum() for k in mask))
    projection_distance = torch.sqrt(sum((w_tau[k] * ~mask[k]).pow(2).sum() for k in mask))
    assert float(moved) == pytest.approx(float(projection_distance), rel=1e-4) == pytest.approx(result['norm'], rel=1e-4)
    assert all(torch.equal(start[k], w_tau[k]) for k in w_tau if k not in mask), 'only prunable weights move'
    dense = torch.load(tmp_path / 'level_00' / 'weights.pt', weights_only=True)
    assert result['level_1']['errors'][0] == result['perturbed']['errors'][0] == \
        evaluate(model, [dense], digits_loaders[1])[0]['error']
    assert result['connected'] == (result['perturbed']['barrier'] <= 0.01)

    # A re-run reuses the trained branches.
    before = len([r for r in make_trainer.records if r.end is not None])
    assert instability(make_trainer, str(tmp_path), betas=[0.0, 0.5, 1.0])['barrier'] == \
        json.loads((tmp_path / 'stability' / 'instability.json').read_text())['barrier']
    assert len([r for r in make_trainer.records if r.end is not None]) == before


def test_experiments_refuse_an_unfinished_run(tmp_path, make_trainer_factory):
    with pytest.raises(ValueError, match='needs finished levels 0..1'):
        perturbation(make_trainer_factory(), str(tmp_path))
    with pytest.raises(ValueError, match='two different, non-zero data seeds'):
        make_trainer = make_trainer_factory(imp=lambda: IMP(ratio=0.5, rewind='5ba'), max_duration='1ep')
        find_ticket(make_trainer, str(tmp_path), levels=0)
        instability(make_trainer, str(tmp_path), data_seeds=(1, 1))
