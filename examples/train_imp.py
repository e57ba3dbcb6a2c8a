"""An ordinary Composer training script: real digits, a small CNN, BlurPool + ChannelsLast + LabelSmoothing."""
import torch
from composer import Trainer
from composer_imp import IMP, find_ticket
from composer.algorithms import BlurPool, ChannelsLast, LabelSmoothing
from composer.loggers import InMemoryLogger
from composer.models import ComposerClassifier
from composer.optim import CosineAnnealingScheduler
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

x, y = load_digits(return_X_y=True)
x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16
y = torch.tensor(y)
train_dataloader = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=64, shuffle=True)
eval_dataloader = DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=400)

def make_trainer(level, seed, imp_args):
    model = ComposerClassifier(nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10)), num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    trainer = Trainer(
        model=model,
        train_dataloader=train_dataloader,
        eval_dataloader=eval_dataloader,
        optimizers=optimizer,
        schedulers=CosineAnnealingScheduler(),
        max_duration='4ep',
        algorithms=[BlurPool(min_channels=8), ChannelsLast(), LabelSmoothing(0.1), IMP(ratio=0.2, rewind='22ba')],
        loggers=[InMemoryLogger()],
        device='cpu',
        seed=seed,
        **imp_args,
    )
    return trainer
rows = find_ticket(make_trainer, 'runs/train_imp', levels=3)
