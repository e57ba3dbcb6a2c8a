"""The registered networks: shapes and how their prunable weights spread over the layers."""

import torch

from composer_imp.masks import prunable_parameters
from composer_imp.models import build_model


def test_allconv_gap_spreads_its_weights_and_classifies_fashion_mnist_sized_images():
    model = build_model('allconv_gap', num_classes=10, in_channels=1, width=16)
    params = prunable_parameters(model)
    sizes = [p.numel() for p in params.values()]
    assert sum(sizes) == 60688
    assert len(sizes) == 5  # four convs and the classifier: no fully-connected hidden layer
    assert max(sizes) / sum(sizes) < 0.75  # unlike conv_fc (97% in one layer)
    model.eval()
    with torch.no_grad():
        assert model.module(torch.randn(3, 1, 28, 28)).shape == (3, 10)
