"""Write MDS shards (MosaicML Streaming) of a dataset read from its usual local files.

    python -m composer_imp.data.convert --dataset cifar10 --data-root data --out mds/cifar10 [--compression zstd]

Writes ``OUT/train`` and ``OUT/val`` (undecoded uint8 images and labels); read them back with
``data: {name: streaming, local: OUT, kind: cifar10}``.
"""

import argparse
import os
import sys

from composer_imp.data import raw_arrays
from composer_imp.data.streaming import write_mds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', required=True, choices=('cifar10', 'cifar100', 'fashion_mnist'))
    parser.add_argument('--data-root', default=None, help='folder of the source files (as data.data_root)')
    parser.add_argument('--out', required=True, help='output folder; gets train/ and val/')
    parser.add_argument('--compression', default=None, help='MDS compression, e.g. zstd')
    args = parser.parse_args(argv)
    try:
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


if __name__ == '__main__':
    sys.exit(main())
