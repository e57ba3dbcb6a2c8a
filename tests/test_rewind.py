"""Rewinding through the level loop: each level starts at step τ from mask ⊙ w_τ with the dense run's
optimizer state (masked), learning rate and data order at τ."""

import pytest
import torch
from composer import Callback
from composer.optim import CosineAnnealingScheduler

from composer_imp import IMP, find_ticket

TAU = 30  # mid-epoch (22 batches per epoch): exercises the dataloader position too


class Probe(Callback):
    """Snapshots the training state at the batch that starts at step ``at`` (or the first batch if None)."""

    def __init__(self, at=None):
        self.at, self.snap = at, None

    def batch_start(self, state, logger):
        if self.snap is None and (self.at is None or int(state.timestamp.batch) == self.at):
            opt = state.optimizers[0]
            self.snap = {
                'step': int(state.timestamp.batch),
                'lr': opt.param_groups[0]['lr'],
                'labels': state.batch[1].clone(),
                'weights': {n: p.detach().clone() for n, p in state.model.named_parameters()},
                'momentum': {n: opt.state[p]['momentum_buffer'].clone() for n, p in state.model.named_parameters()
                             if 'momentum_buffer' in opt.state.get(p, {})},
            }


@pytest.mark.parametrize('tau', [0, TAU])
def test_levels_start_from_masked_rewind_point(tau, tmp_path, make_trainer_factory):
    probes = {}

    def extra(level):
        probes[level] = Probe(at=tau if level == 0 else None)
        return dict(schedulers=[CosineAnnealingScheduler()], callbacks=[probes[level]])

    make_trainer = make_trainer_factory(
        imp=lambda: IMP(ratio=0.5, rewind=f'{tau}ba'), max_duration='3ep', extra=extra,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3))
    rows = find_ticket(make_trainer, str(tmp_path), levels=2, seed=3)
    assert [r.level for r in make_trainer.records] == [0, 1, 2]
    dense = probes[0].snap
    assert dense['step'] == tau
    for level in (1, 2):
        mask = torch.load(tmp_path / f'level_{level:02d}' / 'mask.pt', weights_only=True)
        snap = probes[level].snap
        assert snap['step'] == tau, 'training must resume at the absolute step tau'
        assert snap['lr'] == pytest.approx(dense['lr'], rel=0, abs=0), 'LR schedule must continue from tau'
        assert torch.equal(snap['labels'], dense['labels']), 'data order from tau must match the dense run'
        for name, w in snap['weights'].items():
            expected = dense['weights'][name] * mask[name] if name in mask else dense['weights'][name]
            assert torch.equal(w, expected), f'{name}: start weights != mask * w_tau'
        for name, buf in snap['momentum'].items():
            assert torch.equal(buf, dense['momentum'][name] * mask[name] if name in mask else dense['momentum'][name])
        assert rows[level]['start_step'] == tau
        assert rows[level]['steps'] == rows[0]['steps'] - tau
    if tau == 0:
        assert not dense['momentum'], 'at step 0 the optimizer has no state (saving the rewind point must not create it)'
        assert not probes[1].snap['momentum'] and not probes[2].snap['momentum']
    else:
        assert dense['momentum'], 'the rewind point must carry the momentum at tau'


def test_rewind_in_epochs_equals_batches(tmp_path, digits_loaders):
    from composer_imp.rewind import rewind_batches
    assert rewind_batches('2ep', len(digits_loaders[0])) == 2 * len(digits_loaders[0])
    assert rewind_batches(7, 22) == 7
    assert IMP(rewind='2ep').tau(len(digits_loaders[0])) == 2 * len(digits_loaders[0])
    for bad in ('abc', '5tok', '-1ba'):
        with pytest.raises(ValueError, match='rewind'):
            rewind_batches(bad, 22)
        with pytest.raises(ValueError, match='rewind'):  # the component refuses it when built, before any Trainer
            IMP(rewind=bad)


def test_rewind_in_epochs_saves_the_same_point(tmp_path, make_trainer_factory):
    """τ = '1ep' and τ = 22 batches (one epoch of digits) rewind every level to the same state."""
    rewound = {}
    for rewind in ('1ep', '22ba'):
        make_trainer = make_trainer_factory(imp=lambda: IMP(ratio=0.5, rewind=rewind), max_duration='2ep')
        rows = find_ticket(make_trainer, str(tmp_path / rewind), levels=1, seed=3)
        assert rows[1]['start_step'] == 22 and rows[1]['steps'] == 22
        rewound[rewind] = make_trainer.records[-1].start
    assert rewound['1ep'].keys() == rewound['22ba'].keys()
    assert all(torch.equal(rewound['1ep'][k], rewound['22ba'][k]) for k in rewound['1ep'])
