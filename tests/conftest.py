"""Shared fixtures: real digits data, a small BN CNN, and helpers to build real Composer Trainers
(``make_trainer_factory``: the ``make_trainer(level, seed, imp_args)`` that :func:`composer_imp.find_ticket` calls)."""

import os
import sys

import pytest
import torch
from composer import Callback
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


class TrainingRecord(Callback):
    """Attached to every Trainer a ``make_trainer_factory`` recipe builds: what that Trainer was given and did.

    ``start``: the weights at the first training batch (after any checkpoint load and IMP's masking at FIT_START);
    ``end``: the weights after ``fit``. Both keyed by the unwrapped model's parameter names; ``None`` until then.
    """

    def __init__(self, level: int, seed: int, imp_args: dict):
        self.level, self.seed, self.imp_args = level, seed, dict(imp_args)
        self.start = self.end = None

    @staticmethod
    def _weights(state):
        from composer_imp.masks import unwrap_model
        return {n: p.detach().cpu().clone() for n, p in unwrap_model(state.model).named_parameters()}

    def batch_start(self, state, logger):
        if self.start is None:
            self.start = self._weights(state)

    def fit_end(self, state, logger):
        self.end = self._weights(state)


@pytest.fixture
def make_trainer_factory(digits_loaders):
    """Builds ``make_trainer(level, seed, imp_args)`` for :func:`composer_imp.find_ticket` from a model constructor.

    ``factory(model=TinyNet, imp=lambda: IMP(ratio=0.2, rewind='5ba'), loaders=digits_loaders, max_duration='2ep',
    optimizer=lambda params: SGD(params, lr=0.05, momentum=0.9), extra=lambda level: {Trainer kwargs})``

    Every call builds a fresh model (``model()``: an ``nn.Module``, wrapped in a ``ComposerClassifier``, or a
    ``ComposerModel``; not seeded here: the loop seeds every RNG with ``seed`` first), optimizer and IMP component
    (``imp()`` may also return a list of components, e.g. none or two, to test refusals), and a real CPU
    ``Trainer(..., seed=seed, **imp_args)``. ``extra(level)``'s ``callbacks`` / ``algorithms`` are added to the
    recipe's, its other keys override. The returned function has ``records``: one :class:`TrainingRecord` per
    Trainer built, in order (``[r.level for r in make_trainer.records if r.end]``: the levels that were fitted).
    """
    from composer import Trainer
    from composer.models import ComposerClassifier, ComposerModel

    from composer_imp import IMP

    def factory(model=TinyNet, imp=None, *, loaders=None, max_duration='2ep', optimizer=None, extra=None,
                num_classes=10):
        train, test = loaders or digits_loaders
        imp = imp or (lambda: IMP(ratio=0.2, rewind='5ba'))
        optimizer = optimizer or (lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9))
        records = []

        def make_trainer(level, seed, imp_args):
            net = model()
            net = net if isinstance(net, ComposerModel) else ComposerClassifier(net, num_classes=num_classes)
            record = TrainingRecord(level, seed, imp_args)
            records.append(record)
            components = imp()
            components = list(components) if isinstance(components, (list, tuple)) else [components]
            kwargs = dict(optimizers=optimizer(net.parameters()), train_dataloader=train, eval_dataloader=test,
                          max_duration=max_duration, progress_bar=False, device='cpu')
            more = dict(extra(level) if extra else {})
            callbacks = [*more.pop('callbacks', []), record]
            algorithms = [*more.pop('algorithms', []), *components]
            kwargs.update(more)
            return Trainer(model=net, algorithms=algorithms, callbacks=callbacks, seed=seed, **kwargs, **imp_args)

        make_trainer.records = records
        return make_trainer
    return factory
