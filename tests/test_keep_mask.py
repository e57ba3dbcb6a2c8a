"""KeepMask in a real Composer Trainer: pruned weights and their optimizer state stay exactly zero."""

import pytest
import torch
from composer import Trainer
from composer.optim import DecoupledSGDW

from composer_imp import KeepMask, full_mask, magnitude_prune
from composer_imp.masks import apply_mask_to_model

OPTIMIZERS = {
    'sgd_momentum_coupled_wd': lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-3),
    'decoupled_sgdw': lambda p: DecoupledSGDW(p, lr=0.1, momentum=0.9, weight_decay=5e-3),
    'adam': lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    'adamw': lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}


def _fit(model, optimizer, loader, algorithms, microbatch=None, duration='12ba'):
    trainer = Trainer(model=model, optimizers=optimizer, train_dataloader=loader, max_duration=duration,
                      algorithms=algorithms, progress_bar=False, device='cpu', seed=0,
                      device_train_microbatch_size=microbatch)
    trainer.fit()
    trainer.close()


@pytest.mark.parametrize('opt', sorted(OPTIMIZERS))
@pytest.mark.parametrize('microbatch', [None, 16])
def test_pruned_weights_and_optimizer_state_are_exactly_zero(opt, microbatch, tiny_model_fn, digits_loaders):
    model = tiny_model_fn()
    mask = magnitude_prune(model, full_mask(model), 0.7)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = OPTIMIZERS[opt](model.parameters())
    _fit(model, optimizer, digits_loaders[0], [KeepMask(mask)], microbatch)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        p = params[name]
        assert torch.all(p[~m] == 0.0), f'{name}: pruned weights moved'
        assert not torch.equal(p[m], before[name][m]), f'{name}: kept weights did not train'
        state = optimizer.state[p]
        tensors = [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == p.shape]
        assert tensors, 'optimizer kept no per-weight state'
        for value in tensors:
            assert torch.all(value[~m] == 0.0), f'{name}: optimizer state of pruned weights is not zero'
            assert value[m].abs().sum() > 0


def test_without_keep_mask_pruned_weights_come_back(tiny_model_fn, digits_loaders):
    """The control: zeroing once is not enough, momentum and weight decay revive pruned weights."""
    model = tiny_model_fn()
    mask = magnitude_prune(model, full_mask(model), 0.7)
    with torch.no_grad():
        apply_mask_to_model(model, mask)
    _fit(model, OPTIMIZERS['sgd_momentum_coupled_wd'](model.parameters()), digits_loaders[0], [])
    params = dict(model.named_parameters())
    assert any(params[n][~m].abs().sum() > 0 for n, m in mask.items())


def test_keep_mask_masks_weights_at_fit_start(tiny_model_fn, digits_loaders):
    model = tiny_model_fn()
    mask = magnitude_prune(model, full_mask(model), 0.5)
    seen = {}

    class Probe(KeepMask):  # records what the weights look like right after FIT_START masking
        def apply(self, event, state, logger):
            super().apply(event, state, logger)
            if not seen:
                seen.update({n: p.detach().clone() for n, p in state.model.named_parameters()})

    _fit(model, torch.optim.SGD(model.parameters(), lr=0.1), digits_loaders[0], [Probe(mask)], duration='1ba')
    assert all(torch.all(seen[n][~m] == 0) for n, m in mask.items())


def test_mask_for_another_model_is_refused(tiny_model_fn, digits_loaders):
    model = tiny_model_fn()
    bad = {'module.conv.weight': torch.ones(3, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match="'module.conv.weight' has shape"):
        _fit(model, torch.optim.SGD(model.parameters(), lr=0.1), digits_loaders[0], [KeepMask(bad)], duration='1ba')


def test_apply_keep_mask_zeroes_weights_gradients_and_optimizer_state(tiny_model_fn, digits_loaders):
    """The functional form (composer_imp.keep_mask, formerly composer_imp.algorithms) after a real step."""
    from composer_imp.keep_mask import apply_keep_mask
    model = tiny_model_fn()
    mask = magnitude_prune(model, full_mask(model), 0.6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = next(iter(digits_loaders[0]))
    model.loss(model((x, y)), (x, y)).backward()
    optimizer.step()
    model.loss(model((x, y)), (x, y)).backward()
    params = dict(model.named_parameters())
    assert all(params[n][~m].abs().sum() > 0 and params[n].grad[~m].abs().sum() > 0 for n, m in mask.items())
    apply_keep_mask(model, mask, optimizer)
    for name, m in mask.items():
        p = params[name]
        assert torch.all(p[~m] == 0) and torch.all(p.grad[~m] == 0) and p[m].abs().sum() > 0
        for key in ('exp_avg', 'exp_avg_sq'):
            assert torch.all(optimizer.state[p][key][~m] == 0) and optimizer.state[p][key][m].abs().sum() > 0


def test_imp_outside_the_level_loop_names_find_ticket(tiny_model_fn, digits_loaders):
    """IMP keeps its mask only inside find_ticket; a plain trainer.fit() is an error naming the fix."""
    from composer_imp import IMP
    model = tiny_model_fn()
    with pytest.raises(RuntimeError, match=r'call that instead of trainer.fit\(\)'):
        _fit(model, torch.optim.SGD(model.parameters(), lr=0.1), digits_loaders[0], [IMP(ratio=0.2)], duration='1ba')
