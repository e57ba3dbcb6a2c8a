"""Model definitions, each wrapped as a Composer ``ComposerClassifier`` (Composer 0.32 ships none).

* ``small_cnn``: a BatchNorm CNN for the CPU-sized real-data runs (8×8 digits, 28×28 Fashion-MNIST).
* ``conv_fc``: a LeNet-style BatchNorm CNN (conv–pool, conv–pool, a fully-connected hidden layer, a linear
  classifier), 97% of its weights in the first fully-connected layer: 90.9% on Fashion-MNIST from a 20k-image subset
  in 8 epochs of a few CPU seconds each (``yamls/fmnist_reproduce.yaml``, ``benchmarks/reproduce.py``).
* ``allconv_gap``: an all-convolutional BatchNorm network with global average pooling (four 3×3 convs, two of them
  strided, and a linear classifier), no layer above 61% of its weights: the unstable-regime counterpart of
  ``conv_fc`` (``benchmarks/unstable``): 88.8% (SGD lr 0.1) / 89.2% (lr 0.4) on Fashion-MNIST from a 20k-image
  subset in 6 epochs of batch 128, about 66 s per training on one CPU core; at lr 0.4 without warm-up it is unstable
  at initialization (two copies trained from it are separated by an error barrier) and stable after an epoch.
* ``resnet20``: the CIFAR ResNet-20 (16/32/64 channels, He et al. 2016), the paper's CIFAR-10 model.
* ``resnet18_cifar``: ResNet-18 with a 3×3 stem and no max-pool, the paper's CIFAR-100 model.
* ``resnet50``: torchvision's ImageNet ResNet-50 with the Mosaic ResNet initialization
  (Kaiming-normal conv/linear weights, BatchNorm weights uniform), the paper's ImageNet model.

Example:
    >>> model = build_model('small_cnn', num_classes=10, in_channels=1, width=16)
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import torch
from composer.models import ComposerClassifier
from torch import nn
from torch.nn import functional as F

__all__ = ['SmallCNN', 'ConvFC', 'AllConvGAP', 'CifarResNet', 'build_model', 'MODELS']


class SmallCNN(nn.Module):
    """Three conv–BN–ReLU blocks, global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class ConvFC(nn.Module):
    """LeNet-style: two conv–BN–ReLU–max-pool blocks, a fully-connected hidden layer with BatchNorm, a linear classifier.

    Args:
        num_classes: outputs of the classifier.
        in_channels: image channels.
        width: channels of the first conv layer (the second has ``2 * width``).
        hidden: units of the fully-connected hidden layer.
        image_size: side of the square input images (28 for Fashion-MNIST, 8 for digits); a multiple of 4.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, hidden: int = 128,
                 image_size: int = 28):
        super().__init__()
        if image_size % 4:
            raise ValueError(f'conv_fc image_size must be a multiple of 4 (two 2x2 max-pools); got {image_size}.')
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(nn.Linear(2 * w * (image_size // 4) ** 2, hidden, bias=False),
                                    nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(torch.flatten(self.features(x), 1)))


class AllConvGAP(nn.Module):
    """All-convolutional: four 3×3 conv–BN–ReLU blocks (the 2nd and 3rd with stride 2), global average pooling, a
    linear classifier. No fully-connected hidden layer, so the weights spread over the layers.

    With ``width=16`` on 28×28 Fashion-MNIST: conv 1→16 (28×28), conv 16→32 stride 2 (14×14), conv 32→64 stride 2
    (7×7), conv 64→64 (7×7), average pool, linear 64→10: 60,688 prunable weights, of which the layers hold
    0.2%, 7.6%, 30.4%, 60.7% and 1.1%. Any input size works (the pooling is global).

    Args:
        num_classes: outputs of the classifier.
        in_channels: image channels.
        width: channels of the first conv layer (then ``2 * width``, ``4 * width``, ``4 * width``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        channels = (in_channels, width, 2 * width, 4 * width, 4 * width)
        blocks = []
        for cin, cout, stride in zip(channels, channels[1:], (1, 2, 2, 1)):
            blocks += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class _BasicBlock(nn.Module):

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): depth 6n+2, widths 16/32/64 (ResNet-20: n=3)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f'CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110); got {depth}.')
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, stride=2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class ResNet18Cifar(nn.Module):
    """ResNet-18 for 32×32 images: 3×3 stem with stride 1 and no max-pool, stages of 64/128/256/512 channels."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for stage, cout in enumerate((64, 128, 256, 512)):
            for i in range(2):
                blocks.append(_BasicBlock(cin, cout, stride=2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-50 with the initialization of Mosaic's ResNet recipe."""
    import torchvision

    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    'small_cnn': SmallCNN,
    'conv_fc': ConvFC,
    'allconv_gap': AllConvGAP,
    'resnet20': lambda num_classes=10, width=16, in_channels=3: CifarResNet(20, num_classes, width, in_channels),
    'cifar_resnet': CifarResNet,
    'resnet18_cifar': ResNet18Cifar,
    'resnet50': resnet50,
}


def build_model(name: str, **kwargs: Any) -> ComposerClassifier:
    """Build a registered network by name and wrap it as a ``ComposerClassifier`` (accuracy + cross-entropy).

    Raises:
        ValueError: an unknown model name or keyword, naming the valid ones.
    """
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        raise ValueError(f'model.name={name!r} is not a known model' + (f' (did you mean {close[0]!r}?)' if close else '') +
                         f'. Known models: {", ".join(MODELS)}.')
    factory = MODELS[name]
    valid = set(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(f'model.{unknown[0]} is not an option of model {name!r}; valid options: {", ".join(sorted(valid))}.')
    num_classes = kwargs.get('num_classes', 10)
    return ComposerClassifier(factory(**kwargs), num_classes=num_classes)
