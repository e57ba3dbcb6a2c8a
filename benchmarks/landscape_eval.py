"""Grid-evaluation cost of the landscape analysis, side by side in one process.

For N networks on a plane (as in a 2-D slice) over the same eval data it times, per evaluated point:
  plain  - one eval-mode pass of the model with its own weights (the floor: a forward over the data),
  ours   - composer_imp.evaluate.evaluate on the N weight sets (functional_call, chunked),
  naive  - what a hand-written loop does: load_state_dict(point), then iterate the eval DataLoader and
           update a torchmetrics accuracy, one point at a time.
Prints medians over repeats and the ratios ours/plain (target <= 1.3) and naive/ours (target >= 3).

    python benchmarks/landscape_eval.py [--model small_cnn|resnet20] [--points 64] [--repeats 3] [--device gpu]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from composer_imp.connectivity import plane_point  # noqa: E402
from composer_imp.data import build_dataloaders, build_datasets  # noqa: E402
from composer_imp.evaluate import evaluate  # noqa: E402
from composer_imp.masks import full_mask, magnitude_prune  # noqa: E402
from composer_imp.models import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', choices=('small_cnn', 'resnet20'), default='small_cnn')
    parser.add_argument('--points', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
    args = parser.parse_args()
    device = torch.device('cuda' if args.device == 'gpu' else 'cpu')
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == 'small_cnn':
        model = build_model('small_cnn', num_classes=10, in_channels=1, width=16)
        _, test = build_datasets('digits')
    else:
        model = build_model('resnet20', num_classes=10, in_channels=1)
        _, test = build_datasets('fashion_mnist', train_subset=1000, pad_to=32)
        test = torch.utils.data.Subset(test, range(2000))
    _, loader = build_dataloaders(test, test, batch_size=1, eval_batch_size=500)
    model.to(device)
    batches = [[t.to(device) for t in b] for b in loader]  # the data on the device for plain and ours
    base = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    mask = {k: m.cpu() for k, m in magnitude_prune(model, full_mask(model), 0.5).items()}
    proj = {k: (v * mask[k] if k in mask else v) for k, v in base.items()}
    other = {k: (v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in base.items()}
    side = int(args.points ** 0.5)
    points = [plane_point(base, proj, other, i / side, j / side, set(mask)) for i in range(side) for j in range(side)]
    n = len(points)

    def plain():
        model.eval()
        with torch.no_grad():
            for b in batches:
                model(b)

    def ours():
        evaluate(model, points, batches)

    def naive():
        from torchmetrics.classification import MulticlassAccuracy
        model.eval()
        with torch.no_grad():
            for p in points:
                model.load_state_dict(p)
                metric = MulticlassAccuracy(num_classes=10, average='micro').to(device)
                for b in loader:
                    b = [t.to(device) for t in b]
                    metric.update(model(b), b[1])
                metric.compute()
        model.load_state_dict(base)

    times = {'plain': [], 'ours': [], 'naive': []}
    for _ in range(args.repeats):  # interleaved
        for name, fn, per in (('plain', plain, 1), ('ours', ours, n), ('naive', naive, n)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t) / per)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f'{args.model} on {device}, {n} points x {sum(len(b[0]) for b in batches)} examples, threads={args.threads}')
    for k, v in med.items():
        print(f'  {k:<6} {1000 * v:8.2f} ms per point')
    print(f'ours/plain = {med["ours"] / med["plain"]:.2f}x (target <= 1.3), naive/ours = {med["naive"] / med["ours"]:.2f}x (target >= 3)')


if __name__ == '__main__':
    main()
