"""composer-imp: lottery tickets with Iterative Magnitude Pruning and weight rewinding for MosaicML Composer."""

from composer_imp.algorithms import KeepMask, apply_keep_mask
from composer_imp.masks import (full_mask, load_mask, magnitude_prune, prunable_parameters, save_mask,
                                sparsity_report)
from composer_imp.orchestrator import IMPConfig, LevelOrchestrator, find_ticket
from composer_imp.rewind import RewindCheckpoint

__version__ = '0.1.0'

__all__ = [
    'KeepMask', 'apply_keep_mask', 'full_mask', 'load_mask', 'magnitude_prune', 'prunable_parameters', 'save_mask',
    'sparsity_report', 'IMPConfig', 'LevelOrchestrator', 'find_ticket', 'RewindCheckpoint',
]
