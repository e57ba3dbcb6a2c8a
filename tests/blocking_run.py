"""A tiny IMP run on real digits that can stop at a chosen point, for the lock and overwrite tests.

    python tests/blocking_run.py FOLDER [--levels N] [--ratio R] [--overwrite] [--block-at LEVEL] [--ready PATH]

With ``--block-at LEVEL`` (``-1``: the pretraining's Trainer) ``make_trainer`` writes ``--ready`` when it is asked for
that Trainer, then waits for ever (the test kills the process). Exit code 2 and the message on stderr for a refusal,
as run.py does.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from composer import Trainer  # noqa: E402
from composer.models import ComposerClassifier  # noqa: E402

from composer_imp import IMP, find_ticket  # noqa: E402
from composer_imp.data import build_dataloaders, build_datasets  # noqa: E402
from conftest import TinyNet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('folder')
    parser.add_argument('--levels', type=int, default=2)
    parser.add_argument('--ratio', type=float, default=0.2)
    parser.add_argument('--overwrite', action='store_true')
    parser.add_argument('--block-at', type=int, default=None)
    parser.add_argument('--ready', default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = build_dataloaders(*build_datasets('digits'), batch_size=64, eval_batch_size=360)
    calls = []

    def make_trainer(level, seed, imp_args):
        pretraining = 'load_path' not in imp_args and not calls
        calls.append(level)
        if args.block_at is not None and (args.block_at == -1 and pretraining or
                                          args.block_at == level and not pretraining):
            open(args.ready, 'w').close()
            while True:
                time.sleep(1)
        model = ComposerClassifier(TinyNet(), num_classes=10)
        return Trainer(model=model, train_dataloader=train, eval_dataloader=test, max_duration='2ep',
                       optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                       algorithms=[IMP(ratio=args.ratio, rewind='5ba')], progress_bar=False, device='cpu', seed=seed,
                       **imp_args)

    try:
        find_ticket(make_trainer, args.folder, levels=args.levels, overwrite=args.overwrite)
    except ValueError as e:
        print(f'composer-imp: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
