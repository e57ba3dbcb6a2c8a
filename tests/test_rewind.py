"""Rewinding through the level loop (Algorithm 1): a pretraining to τ, then every level, level 0 included, starts at
step τ from mask ⊙ w_τ with the learning rate at τ; by default with a fresh optimizer and its own data order
(OpenLTH), with ``IMP(rewind_optimizer=True, data_order='replay')`` with the pretraining's momentum and data order."""

import math

import pytest
import torch
from composer import Callback
from composer.optim import CosineAnnealingScheduler

from composer_imp import IMP, find_ticket
from composer_imp.data_order import reseed_data_order

TAU = 30  # mid-epoch (22 batches per epoch): exercises the dataloader position too


class Probe(Callback):
    """Snapshots the training state: after the batch that ends at step ``at`` (the pretraining's last), or at the
    first batch a Trainer trains (a level's first, at τ)."""

    def __init__(self, at=None):
        self.at, self.snap = at, None

    def _snapshot(self, state, labels):
        opt = state.optimizers[0]
        self.snap = {
            'step': int(state.timestamp.batch), 'lr': opt.param_groups[0]['lr'], 'labels': labels,
            'weights': {n: p.detach().clone() for n, p in state.model.named_parameters()},
            'momentum': {n: opt.state[p]['momentum_buffer'].clone() for n, p in state.model.named_parameters()
                         if 'momentum_buffer' in opt.state.get(p, {})},
        }

    def batch_start(self, state, logger):
        if self.snap is None and self.at is None:
            self._snapshot(state, state.batch[1].clone())

    def batch_end(self, state, logger):
        if self.snap is None and self.at is not None and int(state.timestamp.batch) == self.at:
            self._snapshot(state, None)


@pytest.mark.parametrize('tau', [0, TAU])
@pytest.mark.parametrize('legacy', [False, True], ids=['openlth', 'replay'])
def test_levels_start_from_masked_rewind_point(tau, legacy, tmp_path, make_trainer_factory, digits_loaders):
    probes = []

    def extra(level):
        probes.append(Probe(at=tau if not probes and tau else None))  # the first Trainer built is the pretraining
        return dict(schedulers=[CosineAnnealingScheduler()], callbacks=[probes[-1]])

    options = dict(rewind_optimizer=True, data_order='replay') if legacy else {}
    make_trainer = make_trainer_factory(
        imp=lambda: IMP(ratio=0.5, rewind=f'{tau}ba', **options), max_duration='3ep', extra=extra,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3))
    rows = find_ticket(make_trainer, str(tmp_path), levels=2, seed=3)
    fitted = [r.level for r in make_trainer.records if r.end is not None]
    assert fitted == ([0, 1, 2] if tau == 0 else [0, 0, 1, 2]), 'a pretraining to τ, then levels 0, 1, 2'
    levels = probes[1:]  # at τ = 0 the pretraining's Trainer is built (it checks the recipe) but not fitted
    if tau:
        pretraining = probes[0].snap
        w_tau, momentum_tau = pretraining['weights'], pretraining['momentum']
        assert pretraining['step'] == tau and momentum_tau
        assert 0.05 < pretraining['lr'] < 0.1 * 0.5 * (1 + math.cos(math.pi * (tau - 1) / 66)) + 1e-9
        assert rows[0]['steps'] == 66 and rows[0]['pretraining_steps'] == tau, 'level 0 counts its pretraining'
    else:
        w_tau, momentum_tau = levels[0].snap['weights'], {}
    # Where the pretraining's data order is at τ (no augmentation here: a batch is its labels).
    train = digits_loaders[0]
    reseed_data_order(train, 0)
    train.sampler.set_epoch(tau // 22)
    replayed = [batch[1] for batch in train][tau % 22]
    # The learning rate the pretraining set for its next step (Composer's schedule at τ): a continuing run's.
    lr_tau = pretraining['lr'] if tau else 0.1
    for level in (0, 1, 2):
        mask = torch.load(tmp_path / f'level_{level:02d}' / 'mask.pt', weights_only=True)
        snap = levels[level].snap
        assert snap['step'] == tau, 'training must resume at the absolute step tau'
        assert snap['lr'] == pytest.approx(lr_tau, rel=1e-12), 'the LR schedule continues from tau'
        for name, w in snap['weights'].items():
            expected = w_tau[name] * mask[name] if name in mask else w_tau[name]
            assert torch.equal(w, expected), f'{name}: start weights != mask * w_tau'
        if legacy:
            assert torch.equal(snap['labels'], replayed), 'replay: the data order from tau is the pretraining\'s'
            assert snap['momentum'].keys() == momentum_tau.keys()
            for name, buf in snap['momentum'].items():
                assert torch.equal(buf, momentum_tau[name] * mask[name] if name in mask else momentum_tau[name])
        else:
            assert not snap['momentum'], 'a fresh optimizer at every level'
            if tau or level:  # level 0 at τ = 0 is the run from initialization, in the run's own order
                assert not torch.equal(snap['labels'], replayed), 'each level draws its own data order'
        assert rows[level]['start_step'] == tau
        if level:
            assert rows[level]['steps'] == 66 - tau and rows[level]['pretraining_steps'] == 0
    if not legacy:
        labels = [p.snap['labels'] for p in levels]
        assert not any(torch.equal(a, b) for i, a in enumerate(labels) for b in labels[i + 1:])
    if tau == 0:
        assert not any(p.snap['momentum'] for p in levels), 'at step 0 the optimizer has no state'


def test_data_order_and_optimizer_options_are_checked():
    for bad in (dict(data_order='shuffle'), dict(rewind_optimizer='yes')):
        with pytest.raises(ValueError, match=next(iter(bad))):
            IMP(**bad)


def test_rewind_in_epochs_equals_batches(tmp_path, digits_loaders):
    from composer_imp.rewind import rewind_batches
    assert rewind_batches('2ep', len(digits_loaders[0])) == 2 * len(digits_loaders[0])
    assert rewind_batches(7, 22) == 7
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
