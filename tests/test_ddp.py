"""IMP under Composer's launcher (`composer -n 2`, gloo on CPU): every rank trains the identical mask and weights."""

import os
import subprocess
import sys

import torch

from conftest import ROOT


def test_two_ranks_hold_identical_masks_and_weights(tmp_path):
    out = tmp_path / 'dump'
    out.mkdir()
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '2', '--master_port', '29613',
           '--stdout', str(tmp_path / 'rank{rank}.out'), '--stderr', str(tmp_path / 'rank{rank}.err'),
           os.path.join(ROOT, 'tests', 'ddp_imp_script.py'), os.path.join(ROOT, 'yamls', 'quickstart.yaml'), str(out),
           f'save_folder={tmp_path / "run"}', 'imp.levels=2', 'imp.ratio=0.5', 'max_duration=2ep', 'imp.rewind=10ba',
           'eval_interval=1ep', 'progress_bar=false', 'model.width=4']
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    logs = ''.join(p.read_text() for p in tmp_path.glob('rank*.*'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    for level in range(3):
        r0 = torch.load(out / f'rank0_level{level}.pt', weights_only=True)
        r1 = torch.load(out / f'rank1_level{level}.pt', weights_only=True)
        # BatchNorm running statistics are rank-local between DDP's buffer broadcasts; parameters must agree bit for bit.
        for k in [k for k in r0['weights'] if 'running_' not in k and 'num_batches' not in k]:
            assert torch.equal(r0['weights'][k], r1['weights'][k]), f'level {level}: {k} differs across ranks'
        if level:
            saved = torch.load(tmp_path / 'run' / f'level_{level:02d}' / 'mask.pt', weights_only=True)
            for k, m in saved.items():
                assert torch.equal(r0['mask'][k], m) and torch.equal(r1['mask'][k], m)
                assert torch.all(r0['weights'][k][~m] == 0)
    summary = (tmp_path / 'run' / 'summary.json').read_text()
    assert summary.count('"level"') == 3, 'outputs are written once, by rank 0'
