"""MosaicML Streaming: MDS shards written by the converter from CIFAR files, read back by an IMP run."""

import json
import os

import pytest
import torch

from conftest import ROOT, normalized
from test_recipes import TINY, _write_cifar

pytestmark = pytest.mark.slow  # launcher subprocesses, SIGKILL, format round trips: `-m 'not slow'` skips them


def test_cifar100_reads_the_same_from_files_and_from_mds_shards(tmp_path):
    # One normalization table for every loader: CIFAR-100 used CIFAR-10's statistics in the in-memory loader only.
    from composer_imp.data import build_datasets, raw_arrays, without_augmentation
    from composer_imp.data.convert import main as convert
    _write_cifar(tmp_path / 'data', 100)
    assert convert(['--dataset', 'cifar100', '--data-root', str(tmp_path / 'data'), '--out', str(tmp_path / 'mds')]) == 0
    mem_train, mem_val = build_datasets('cifar100', data_root=str(tmp_path / 'data'))
    train, val = build_datasets('streaming', local=str(tmp_path / 'mds'), kind='cifar100')
    view, mem_view = without_augmentation(train), without_augmentation(mem_train)
    for i in (0, 7, 19):
        assert torch.allclose(val[i][0], mem_val[i][0], atol=1e-6) and int(val[i][1]) == int(mem_val[i][1])
        assert torch.allclose(view[i][0], mem_view[i][0], atol=1e-6)
    raw = raw_arrays('cifar100', str(tmp_path / 'data'))['train'][0]
    assert torch.allclose(mem_view[3][0], normalized(raw[3:4], 'cifar100')[0], atol=1e-6)
    del train, val, view  # Streaming allows one instance per local folder at a time


def test_convert_then_train_imp_from_mds_shards(tmp_path, capsys):
    import run
    from composer_imp.data import build_datasets, raw_arrays
    from composer_imp.data.convert import main as convert
    _write_cifar(tmp_path / 'data', 10)
    assert convert(['--dataset', 'cifar10', '--data-root', str(tmp_path / 'data'), '--out', str(tmp_path / 'mds')]) == 0
    assert 'cifar10 train: 100 samples' in capsys.readouterr().out
    # the shards hold exactly the source images, normalized like the in-memory loader
    raw = raw_arrays('cifar10', str(tmp_path / 'data'))
    train, val = build_datasets('streaming', local=str(tmp_path / 'mds'), kind='cifar10')
    assert len(train) == 100 and len(val) == 20
    _, mem_val = build_datasets('cifar10', data_root=str(tmp_path / 'data'))
    x, y = val[3]
    mx, my = mem_val[3]
    assert int(y) == int(my) == int(raw['val'][1][3]) and torch.allclose(x, mx)
    # the sweep's view of the training shards: every sample, decoded without crop or flip
    from composer_imp.data import without_augmentation
    view = without_augmentation(train)
    expected = normalized(raw['train'][0][:100], 'cifar10')
    assert len(view) == 100 and all(torch.allclose(view[i][0], expected[i], atol=1e-6) for i in range(0, 100, 7))
    del train, val, view  # Streaming allows one instance per local folder at a time

    code = run.main(['-f', os.path.join(ROOT, 'yamls', 'cifar10_resnet20_imp.yaml'), f'save_folder={tmp_path / "run"}',
                     'data.name=streaming', f'data.data_root={tmp_path / "mds"}', 'data.kind=cifar10',
                     'data.batch_size=10', 'data.eval_batch_size=10',
                     *TINY])
    assert code == 0, capsys.readouterr().err[-2000:]
    rows = json.loads((tmp_path / 'run' / 'summary.json').read_text())['levels']
    assert [r['level'] for r in rows] == [0, 1] and rows[1]['start_step'] == 2


def test_converter_refuses_to_overwrite_and_reader_names_missing_shards(tmp_path, capsys):
    from composer_imp.data import build_datasets
    from composer_imp.data.convert import main as convert
    with pytest.raises(FileNotFoundError, match="No MDS shards at data.local=.*composer_imp.data.convert"):
        build_datasets('streaming', local=str(tmp_path / 'nothing'), kind='cifar10')
    (tmp_path / 'out' / 'train').mkdir(parents=True)
    (tmp_path / 'out' / 'train' / 'keep.txt').write_text('x')
    _write_cifar(tmp_path / 'data', 10)
    assert convert(['--dataset', 'cifar10', '--data-root', str(tmp_path / 'data'), '--out', str(tmp_path / 'out')]) == 2
    assert 'not empty; refusing to overwrite' in capsys.readouterr().err
    assert (tmp_path / 'out' / 'train' / 'keep.txt').read_text() == 'x'


def test_levels_continue_the_streamed_data_order_from_tau(tmp_path):
    """The rewind point carries Streaming's position and shuffle seed: every level starts at τ's sample, in the
    pretraining's order (replay) or each in its own (new). Two runs share the loaders in one process: the second
    pretraining starts at the beginning, not at the position the first run's levels resumed from."""
    from composer import Trainer
    from composer_imp import IMP, find_ticket
    from composer_imp.data import make_loaders
    from composer_imp.data.convert import main as convert
    from composer_imp.models import build_model
    from test_rewind import Probe
    _write_cifar(tmp_path / 'data', 10)
    assert convert(['--dataset', 'cifar10', '--data-root', str(tmp_path / 'data'), '--out', str(tmp_path / 'mds')]) == 0
    _, train, val = make_loaders('streaming', {'data_root': str(tmp_path / 'mds'), 'kind': 'cifar10', 'device_batch_size': 10,
                                                  'device_eval_batch_size': 10}, {'batch_size': 10, 'eval_batch_size': 10})
    tau = 13  # 10 batches per epoch: mid-epoch 2, restored from Streaming's own state in the rewind checkpoint
    first = {}

    for data_order in ('replay', 'new'):
        probes = []

        def make_trainer(level, seed, imp_args):  # the loaders are built once and reused by every level and run
            model = build_model('resnet20', num_classes=10, width=4)
            probes.append(Probe())
            return Trainer(model=model, optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                           train_dataloader=train, eval_dataloader=val, max_duration='2ep', callbacks=[probes[-1]],
                           algorithms=[IMP(ratio=0.2, rewind=f'{tau}ba', data_order=data_order)], progress_bar=False,
                           device='cpu', seed=seed, **imp_args)

        rows = find_ticket(make_trainer, str(tmp_path / data_order), levels=1, seed=3)
        assert [r['level'] for r in rows] == [0, 1] and rows[1]['start_step'] == tau and rows[1]['steps'] == 20 - tau
        first[data_order] = [p.snap for p in probes]  # the pretraining's first batch, then each level's first
        assert [s['step'] for s in first[data_order]] == [0, tau, tau]
    (pre_r, level0_r, level1_r), (pre_n, level0_n, level1_n) = first['replay'], first['new']
    assert torch.equal(pre_r['labels'], pre_n['labels']), 'each pretraining starts at the beginning of its order'
    assert torch.equal(level0_r['labels'], level1_r['labels']), 'replay: every level continues the pretraining order'
    assert not torch.equal(level0_n['labels'], level0_r['labels']), 'new: level 0 draws its own order from τ'
    assert not torch.equal(level1_n['labels'], level0_n['labels']), 'new: and level 1 another'


def test_sigkilled_streaming_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Mid-level autoresume restores Streaming's sample position from the checkpoint, after a SIGKILL that
    leaves Streaming's shared memory behind."""
    import signal
    import subprocess
    import sys
    import time
    from composer_imp.data.convert import main as convert
    _write_cifar(tmp_path / 'data', 10)
    assert convert(['--dataset', 'cifar10', '--data-root', str(tmp_path / 'data'), '--out', str(tmp_path / 'mds')]) == 0

    def cmd(folder):
        return [sys.executable, os.path.join(ROOT, 'run.py'), '-f', os.path.join(ROOT, 'yamls', 'cifar10_resnet20_imp.yaml'),
                f'save_folder={folder}', 'data.name=streaming', f'data.data_root={tmp_path / "mds"}', 'data.kind=cifar10',
                'data.batch_size=10', 'data.eval_batch_size=10', 'data.num_workers=0', 'device=cpu', 'progress_bar=false',
                'levels=1', 'algorithms.IMP.rewind=5ba', 'max_duration=3ep', 'eval_interval=3ep',
                'checkpoint_interval=5ba', 'analysis.enabled=false']

    def finish(folder):
        proc = subprocess.run(cmd(folder), capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    finish(tmp_path / 'ref')
    run = tmp_path / 'run'
    proc = subprocess.Popen(cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 300
    while not (run / 'level_01' / 'checkpoints' / 'latest-rank0.pt').exists():
        assert proc.poll() is None and time.time() < deadline, 'the run ended before the kill point'
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / 'level_01' / 'level.json').exists()
    finish(run)
    rows, ref = (json.loads((f / 'summary.json').read_text())['levels'] for f in (run, tmp_path / 'ref'))
    assert rows[1]['resumed_from_step'] > rows[1]['start_step'] == 5
    for key in ('weights_remaining', 'accuracy', 'loss', 'steps', 'cumulative_steps', 'train_loss_mean'):
        assert [r[key] for r in rows] == [r[key] for r in ref], key
    a, b = (torch.load(f / 'level_01' / 'weights.pt', weights_only=True) for f in (run, tmp_path / 'ref'))
    assert all(torch.equal(a[k], b[k]) for k in a), 'the resumed level trained on the same samples in the same order'
