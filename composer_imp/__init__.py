"""composer-imp: lottery tickets for MosaicML Composer.

``IMP`` / ``AdaptiveIMP`` go in your Trainer's ``algorithms``; :func:`find_ticket` runs the levels in place of
``trainer.fit()``. Turn on the progress lines with ``logging.basicConfig(level=logging.INFO)``.
"""

from composer_imp.adaptive import AdaptiveIMP, sweep_ratio
from composer_imp.controls import run_controls
from composer_imp.imp import IMP, apply_imp
from composer_imp.keep_mask import KeepMask, apply_keep_mask
from composer_imp.level_loop import find_ticket
from composer_imp.masks import (full_mask, load_mask, magnitude_prune, prunable_parameters, save_mask,
                                sparsity_report)
from composer_imp.rewind import RewindCheckpoint

__version__ = '0.3.0'

__all__ = [
    'IMP', 'AdaptiveIMP', 'find_ticket', 'apply_imp', 'sweep_ratio', 'run_controls', 'KeepMask', 'apply_keep_mask',
    'full_mask', 'load_mask', 'magnitude_prune', 'prunable_parameters', 'save_mask', 'sparsity_report',
    'RewindCheckpoint',
]
