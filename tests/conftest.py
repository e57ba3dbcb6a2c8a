"""Shared fixtures: real digits data, a small BN CNN, and helpers to build real Composer Trainers."""

import os
import sys

import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def normalized(images, kind: str) -> torch.Tensor:
    """uint8 CIFAR images (N, 3, H, W) as the loaders should serve them: in [0, 1], then per-channel normalized."""
    from composer_imp.data.normalization import NORMALIZATION
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATION[kind])
    return (torch.as_tensor(images).float() / 255 - mean) / std


@pytest.fixture(scope='session')
def digits_loaders():
    from composer_imp.data import build_dataloaders, build_datasets
    train, test = build_datasets('digits')
    return build_dataloaders(train, test, batch_size=64, eval_batch_size=360)


class TinyNet(nn.Module):
    """A conv + BN + linear net on 8x8 digits: every prunable kind and a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(nn.functional.max_pool2d(x, 2), 1))


@pytest.fixture
def tiny_model_fn():
    from composer.models import ComposerClassifier

    def make():
        torch.manual_seed(0)
        return ComposerClassifier(TinyNet(), num_classes=10)
    return make
