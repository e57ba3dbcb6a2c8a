"""Loader throughput side by side: torchvision-style CIFAR batches, MosaicML Streaming (MDS) and FFCV (.beton)
on the same images, plus the share of a quickstart training step spent waiting for data.

    python benchmarks/loaders.py [--images 5000] [--epochs 3] [--batch-size 128] [--workers 1]

Each loader reads the same synthetic CIFAR-format images (written in each real format into a temp folder)
with its training pipeline (crop/translate + flip + normalize). Epoch 1 is reported separately (FFCV
compiles its pipeline then); the rest give the median images/s.
"""

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_cifar(root, n):
    rng = np.random.default_rng(0)
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder)
    per = n // 5
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({b'data': rng.integers(0, 256, (per, 3072), dtype=np.uint8), b'labels': rng.integers(0, 10, per).tolist()}, f)


def time_epochs(loader, epochs):
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        count = sum(len(batch[1]) for batch in loader)
        times.append(count / (time.perf_counter() - t))
    return times


def data_wait_share():
    from composer import Callback
    from composer_imp.config import load_config
    from composer_imp.recipes import build_recipe

    class Wait(Callback):
        """Time from the end of a batch (or the start of an epoch) until the next batch has been loaded."""

        def __init__(self):
            self.mark, self.wait = None, 0.0

        def epoch_start(self, state, logger):
            self.mark = time.perf_counter()

        def after_dataloader(self, state, logger):
            self.wait += time.perf_counter() - self.mark

        def batch_end(self, state, logger):
            self.mark = time.perf_counter()

    recipe = build_recipe(load_config('yamls/quickstart.yaml', ['progress_bar=false', 'max_duration=4ep',
                                                                 'algorithms={}', 'algorithms.IMP={}']))
    wait = Wait()
    trainer = recipe.make_trainer(0, 17, {})
    trainer.state.callbacks.append(wait)
    trainer.state.algorithms[:] = [a for a in trainer.state.algorithms if type(a).__name__ != 'IMP']  # dense only
    t = time.perf_counter()
    trainer.fit()
    elapsed = time.perf_counter() - t
    trainer.close()
    return wait.wait, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', type=int, default=5000)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--workers', type=int, default=1)
    args = parser.parse_args()

    from composer_imp.data import build_dataloaders, build_datasets, raw_arrays
    from composer_imp.data.streaming import write_mds

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar(tmp, args.images)
        train, test = build_datasets('cifar10', data_root=tmp)
        loader, _ = build_dataloaders(train, test, args.batch_size, num_workers=args.workers)
        results['torchvision-style (pickle batches)'] = time_epochs(loader, args.epochs)

        arrays = raw_arrays('cifar10', tmp)
        for split in ('train', 'val'):
            write_mds(*arrays[split], os.path.join(tmp, 'mds', split))
        train, test = build_datasets('streaming', data_root=os.path.join(tmp, 'mds'), kind='cifar10',
                                     device_batch_size=args.batch_size, device_eval_batch_size=args.batch_size)
        loader, _ = build_dataloaders(train, test, args.batch_size, num_workers=args.workers)
        results['Streaming (MDS)'] = time_epochs(loader, args.epochs)
        del train, test, loader
        try:
            from composer_imp.data.ffcv import ffcv_loaders, write_beton
            for split in ('train', 'val'):
                write_beton(*arrays[split], os.path.join(tmp, 'ffcv', f'{split}.beton'))
            loader, _ = ffcv_loaders(os.path.join(tmp, 'ffcv'), 'cifar10', args.batch_size, args.batch_size,
                                     num_workers=max(1, args.workers))
            results['FFCV (.beton)'] = time_epochs(loader, args.epochs)
        except ImportError as e:
            print(f'FFCV skipped: {e}')

    print(f'\n{args.images} CIFAR-format images, batch {args.batch_size}, workers {args.workers}, CPU')
    base = statistics.median(next(iter(results.values()))[1:])
    for name, rates in results.items():
        med = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
        print(f'  {name:<36} first epoch {rates[0]:9.0f} img/s   later epochs median {med:9.0f} img/s   ({med / base:.2f}x torchvision-style)')
    wait, elapsed = data_wait_share()
    print(f'quickstart (digits, in-memory tensors): {100 * wait / elapsed:.1f}% of training time waiting for data '
          f'({wait:.2f} s of {elapsed:.2f} s)')


if __name__ == '__main__':
    main()
