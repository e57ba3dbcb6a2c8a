"""Masks and magnitude pruning: pure functions, no Composer Trainer."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from composer_imp.masks import (full_mask, load_mask, magnitude_prune, prunable_parameters, save_mask,
                                sparsity_report)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4, 5))


def test_prunable_are_conv_and_linear_weights_only():
    names = list(prunable_parameters(_net()))
    assert names == ['0.weight', '4.weight']  # no biases, no BatchNorm


def test_global_prune_removes_exact_count_of_smallest_and_nests():
    net = _net()
    mask = full_mask(net)
    total = sum(m.numel() for m in mask.values())
    m1 = magnitude_prune(net, mask, 0.2)
    assert sparsity_report(m1)['remaining'] == total - round(0.2 * total)
    m2 = magnitude_prune(net, m1, 0.3)
    remaining1 = sparsity_report(m1)['remaining']
    assert sparsity_report(m2)['remaining'] == remaining1 - round(0.3 * remaining1)
    params = dict(net.named_parameters())
    for name in m2:
        assert not (m2[name] & ~m1[name]).any(), 'masks must be nested'
    kept = torch.cat([params[n].detach().abs()[m2[n]] for n in m2])
    pruned = torch.cat([params[n].detach().abs()[~m2[n]] for n in m2])
    assert pruned.max() <= kept.min()


def test_global_prune_matches_torch_reference():
    net, ref = _net(1), _net(1)
    mask = magnitude_prune(net, full_mask(net), 0.6)
    torch_prune.global_unstructured([(ref[0], 'weight'), (ref[4], 'weight')], pruning_method=torch_prune.L1Unstructured, amount=0.6)
    assert torch.equal(mask['0.weight'], ref[0].weight_mask.bool())
    assert torch.equal(mask['4.weight'], ref[4].weight_mask.bool())


def test_layerwise_prunes_each_layer_by_its_own_count():
    net = _net()
    mask = magnitude_prune(net, full_mask(net), 0.5, scope='layerwise')
    for name, m in mask.items():
        assert int((~m).sum()) == round(0.5 * m.numel())
    glob = magnitude_prune(net, full_mask(net), 0.5, scope='global')
    assert any(not torch.equal(glob[n], mask[n]) for n in mask)


def test_ties_are_broken_deterministically_by_index():
    weights = {'a.weight': torch.ones(10), 'b.weight': torch.ones(6)}
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()}
    m = magnitude_prune(weights, mask, 0.25)  # round(0.25*16) = 4 of 16 equal weights
    assert m['a.weight'].tolist() == [False] * 4 + [True] * 6
    assert m['b.weight'].all()
    assert all(torch.equal(m[k], magnitude_prune(weights, mask, 0.25)[k]) for k in m)


def test_already_pruned_weights_are_not_counted_again():
    weights = {'w': torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 4.0])}
    mask = {'w': torch.tensor([False, False, True, True, True, True])}
    m = magnitude_prune(weights, mask, 0.5)
    assert m['w'].tolist() == [False, False, False, False, True, True]


@pytest.mark.parametrize('fraction', [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_open_interval_is_refused(fraction):
    with pytest.raises(ValueError, match='between 0 and 1|in \\(0, 1\\)'):
        magnitude_prune(_net(), full_mask(_net()), fraction)


def test_ignore_list_is_validated_and_applied():
    net = _net()
    assert list(full_mask(net, ignore=['4'])) == ['0.weight']           # a module name
    assert list(full_mask(net, ignore=['4.weight'])) == ['0.weight']    # a parameter name
    with pytest.raises(ValueError, match="'4.wieght'.*Did you mean '4.weight'"):
        full_mask(net, ignore=['4.wieght'])
    with pytest.raises(ValueError, match='never pruned'):
        full_mask(net, ignore=['4.bias'])


def test_ignore_names_the_wrapped_prefix_when_missing():
    from composer.models import ComposerClassifier
    model = ComposerClassifier(_net(), num_classes=5)
    with pytest.raises(ValueError, match="Did you mean 'module.4.weight'"):
        full_mask(model, ignore=['4.weight'])


def test_mask_file_roundtrip_weights_only(tmp_path):
    net = _net()
    mask = magnitude_prune(net, full_mask(net), 0.4)
    path = tmp_path / 'mask.pt'
    save_mask(mask, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(mask) and all(raw[k].dtype == torch.bool for k in raw)
    loaded = load_mask(path, model=net)
    assert all(torch.equal(loaded[k], mask[k]) for k in mask)
    with pytest.raises(ValueError, match="'0.weight' has shape"):
        load_mask(path, model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4, 5)))


def test_sparsity_report_counts_per_layer():
    mask = {'a': torch.tensor([True, False, False, True]), 'b': torch.tensor([True, True])}
    report = sparsity_report(mask)
    assert report['total'] == 6 and report['remaining'] == 4
    assert report['layers']['a']['weights_remaining'] == 0.5


@pytest.mark.parametrize('scope', ['global', 'layerwise'])
def test_channels_last_weights_get_contiguous_masks_that_prune_the_same_weights(scope, tmp_path):
    """Composer's ChannelsLast (and torch's to(memory_format=...)) make conv weights non-contiguous; masks are
    flattened and saved as they are, so they must stay contiguous and name the same weights by logical index."""
    net, ref = _net(2), _net(2)
    net.to(memory_format=torch.channels_last)
    assert not net[0].weight.is_contiguous()
    mask = full_mask(net)
    assert all(m.is_contiguous() and m.dtype == torch.bool and m.all() for m in mask.values())
    pruned = magnitude_prune(net, mask, 0.5, scope=scope)
    expected = magnitude_prune(ref, full_mask(ref), 0.5, scope=scope)
    assert all(torch.equal(pruned[k], expected[k]) for k in expected)
    again = magnitude_prune(net, pruned, 0.5, scope=scope)  # nested, on the channels-last weights again
    assert all(not (again[k] & ~pruned[k]).any() for k in again)
    save_mask(again, tmp_path / 'mask.pt')
    loaded = load_mask(tmp_path / 'mask.pt', model=net)
    assert all(torch.equal(loaded[k], again[k]) for k in again)
