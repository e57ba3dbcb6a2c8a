"""IMP as a plugin: the README's diff applied to an ordinary Composer script, and Composer's surgery algorithms."""

import difflib
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from composer import Trainer
from composer.algorithms import BlurPool, ChannelsLast, LabelSmoothing, SqueezeExcite
from composer.models import ComposerClassifier
from torch import nn

from composer_imp import IMP, find_ticket
from composer_imp.run_folder import RunFolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_diff() -> str:
    text = open(os.path.join(ROOT, 'README.md')).read()
    blocks = re.findall(r'```diff\n(.*?)```', text, flags=re.S)
    assert len(blocks) == 1, 'the README shows one adoption diff'
    return blocks[0]


@pytest.mark.slow
def test_readme_diff_turns_the_ordinary_script_into_an_imp_run(tmp_path):
    ordinary = open(os.path.join(ROOT, 'examples', 'train.py')).read()
    with_imp = open(os.path.join(ROOT, 'examples', 'train_imp.py')).read()
    diff = _readme_diff()
    # The README's diff is the diff between the two tested files, and applying it to the ordinary script gives the
    # script that runs below.
    expected = ''.join(difflib.unified_diff(ordinary.splitlines(True), with_imp.splitlines(True),
                                            'a/examples/train.py', 'b/examples/train.py'))
    assert diff == expected
    os.makedirs(tmp_path / 'examples')
    shutil.copy(os.path.join(ROOT, 'examples', 'train.py'), tmp_path / 'examples' / 'train.py')
    (tmp_path / 'readme.diff').write_text(diff)
    subprocess.run(['git', 'apply', 'readme.diff'], cwd=tmp_path, check=True)
    assert (tmp_path / 'examples' / 'train.py').read_text() == with_imp
    changed = [l for l in difflib.unified_diff([l.strip() for l in ordinary.splitlines()],
                                               [l.strip() for l in with_imp.splitlines()], lineterm='', n=0)
               if l[:1] in '+-' and l[:3] not in ('+++', '---')]
    assert len(changed) <= 12, changed  # import, def, algorithms, seed, **imp_args, fit -> return + find_ticket

    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, 'examples/train.py'], cwd=tmp_path, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    folder = RunFolder(str(tmp_path / 'runs' / 'train_imp'))
    assert folder.levels_done() == [0, 1, 2, 3]
    masks = [torch.load(folder.mask(l), weights_only=True) for l in range(4)]
    assert any('.conv.weight' in name for name in masks[0])  # BlurPool's surgery names, bound after Composer's INIT
    for level in (1, 2, 3):
        weights = folder.load_weights(level)
        for name, m in masks[level].items():
            assert not (m & ~masks[level - 1][name]).any()  # nested
            assert torch.count_nonzero(weights[name][~m]) == 0  # pruned weights exactly zero
        kept = sum(int(m.sum()) for m in masks[level].values())
        assert kept == pytest.approx(0.8 ** level * sum(m.numel() for m in masks[0].values()), rel=0.01)


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.fc(torch.flatten(torch.relu(self.bn(self.down(x))), 1))


def test_blurpool_and_squeeze_excite_with_channels_last_and_label_smoothing(tmp_path, digits_loaders):
    train, test = digits_loaders

    def make_trainer(level, seed, imp_args):
        model = ComposerClassifier(SENet(), num_classes=10)
        return Trainer(model=model, train_dataloader=train, eval_dataloader=test, max_duration='30ba',
                       optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), device='cpu',
                       progress_bar=False, seed=seed, algorithms=[
                           BlurPool(min_channels=8), SqueezeExcite(min_channels=8, latent_channels=8), ChannelsLast(),
                           LabelSmoothing(0.1), IMP(ratio=0.5, rewind='4ba')], **imp_args)

    rows = find_ticket(make_trainer, str(tmp_path), levels=2, checkpoint_interval='10ba')
    folder = RunFolder(str(tmp_path))
    mask = torch.load(folder.mask(2), weights_only=True)
    # BlurPool wrapped the strided conv, SqueezeExcite wrapped both convs and added its own linear layers: the mask
    # names the parameters as the Trainer held them after surgery, and includes SqueezeExcite's new weights.
    assert 'module.down.conv.weight' in mask or 'module.down.conv.conv.weight' in mask
    assert any('.se.' in name for name in mask)
    weights = folder.load_weights(2)
    assert set(mask) <= set(weights)
    for name, m in mask.items():
        assert torch.count_nonzero(weights[name][~m]) == 0
    assert rows[2]['weights_remaining'] == pytest.approx(0.25, abs=0.01)
    assert [r['start_step'] for r in rows] == [4, 4, 4]  # level 0 too trains from w_τ


def test_fitting_a_trainer_with_imp_outside_the_loop_names_the_fix(digits_loaders):
    train, _ = digits_loaders
    model = ComposerClassifier(SENet(), num_classes=10)
    trainer = Trainer(model=model, train_dataloader=train, max_duration='2ba', device='cpu', progress_bar=False,
                      algorithms=[IMP()])
    with pytest.raises(RuntimeError, match='find_ticket'):
        trainer.fit()
    trainer.close()
