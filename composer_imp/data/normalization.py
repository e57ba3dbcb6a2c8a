"""Per-channel (mean, std) of each dataset's training images in [0, 1]: one table for every loader
(torchvision-style, Streaming, FFCV), so the same images are normalized the same way whichever reads them."""

__all__ = ['NORMALIZATION']

NORMALIZATION = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
