"""Write MDS shards (MosaicML Streaming) of a dataset read from its usual local files.

    python -m composer_imp.data.convert --dataset cifar10 --data-root data --out mds/cifar10 [--compression zstd]
    python -m composer_imp.data.convert --format ffcv --dataset cifar10 --data-root data --out ffcv/cifar10
    python -m composer_imp.data.convert --format ffcv --dataset imagefolder --data-root /datasets/imagenet --out ffcv/imagenet

MDS: writes ``OUT/train`` and ``OUT/val`` (undecoded uint8 images and labels); read them back with
``data: {name: streaming, data_root: OUT, kind: cifar10}``. FFCV: writes ``OUT/train.beton`` and
``OUT/val.beton`` (raw pixels for CIFAR, JPEG at most 512 px for ImageFolder trees); read with
``data: {name: ffcv, data_root: OUT, kind: cifar10 | imagenet}``.
"""

import argparse
import os
import sys

from composer_imp.data import raw_arrays
from composer_imp.data.ffcv import write_beton
from composer_imp.data.streaming import write_mds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', required=True, choices=('cifar10', 'cifar100', 'fashion_mnist', 'imagefolder'))
    parser.add_argument('--format', default='mds', choices=('mds', 'ffcv'))
    parser.add_argument('--data-root', default=None, help='folder of the source files (as data.data_root)')
    parser.add_argument('--out', required=True, help='output folder; gets train/ and val/')
    parser.add_argument('--compression', default=None, help='MDS compression, e.g. zstd')
    args = parser.parse_args(argv)
    try:
        if args.format == 'ffcv':
            return _to_ffcv(args)
        if args.dataset == 'imagefolder':
            raise ValueError('MDS conversion supports cifar10, cifar100 and fashion_mnist; use --format ffcv for ImageFolder trees.')
        arrays = raw_arrays(args.dataset, args.data_root)
        for split in ('train', 'val'):
            if os.path.isdir(os.path.join(args.out, split)) and os.listdir(os.path.join(args.out, split)):
                raise FileExistsError(f'{os.path.join(args.out, split)} is not empty; refusing to overwrite. '
                                      'Remove it or choose another --out.')
        for split in ('train', 'val'):
            n = write_mds(*arrays[split], os.path.join(args.out, split), args.compression)
            print(f'{args.dataset} {split}: {n} samples -> {os.path.join(args.out, split)}')
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f'composer-imp convert: error: {e}', file=sys.stderr)
        return 2
    return 0


def _to_ffcv(args) -> int:

    paths = {split: os.path.join(args.out, f'{split}.beton') for split in ('train', 'val')}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing:
        raise FileExistsError(f'{", ".join(existing)} exist; refusing to overwrite. Remove them or choose another --out.')
    if args.dataset == 'imagefolder':
        from torchvision.datasets import ImageFolder
        for split, path in paths.items():
            folder = ImageFolder(os.path.join(args.data_root or 'data/imagenet', 'train' if split == 'train' else 'val'))
            images = _Lazy(folder)
            n = write_beton(images, [label for _, label in folder.samples], path, jpeg=True, max_resolution=512)
            print(f'imagefolder {split}: {n} images -> {path}')
        return 0
    if args.dataset == 'fashion_mnist':
        raise ValueError('FFCV RGB fields need 3-channel images; convert fashion_mnist to MDS instead.')
    arrays = raw_arrays(args.dataset, args.data_root)
    for split, path in paths.items():
        n = write_beton(*arrays[split], path)
        print(f'{args.dataset} {split}: {n} samples -> {path}')
    return 0


class _Lazy:
    """PIL images of an ImageFolder, loaded one at a time by FFCV's writer."""

    def __init__(self, folder):
        self.folder = folder

    def __getitem__(self, i):
        return self.folder[i][0]


if __name__ == '__main__':
    sys.exit(main())
