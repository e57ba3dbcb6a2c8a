"""Run under `composer -n 2`: a short IMP run where every rank dumps what it trained, for tests/test_ddp.py.

    composer -n 2 tests/ddp_imp_script.py RECIPE.yaml DUMP_FOLDER [key=value ...]

Like run.py (the recipe's own ``make_trainer`` through :func:`composer_imp.find_ticket`, then the analysis on every
rank), with one more callback in each level's Trainer.
"""

import hashlib
import logging
import sys

import torch
from composer import Callback
from composer.utils import dist
from omegaconf import OmegaConf

from composer_imp import IMP, find_ticket
from composer_imp.analysis import LandscapeSettings, analyze_run
from composer_imp.config import load_config
from composer_imp.masks import unwrap_model
from composer_imp.recipes import build_recipe


class DumpRankState(Callback):
    """Per rank: final weights and mask, the labels of each training epoch, and what evaluation saw."""

    def __init__(self, out, level):
        self.out, self.level = out, level
        self.eval_seen = 0
        self.eval_images = []   # a fingerprint per evaluated example (exact pixel bytes)
        self.train_labels = {}  # epoch -> labels of the training batches this rank read
        self.eval_counted = []  # per evaluation: examples this rank's accuracy metric counted

    def batch_end(self, state, logger):
        self.train_labels.setdefault(int(state.timestamp.epoch), []).extend(state.batch[1].tolist())

    def eval_batch_end(self, state, logger):
        self.eval_seen += len(state.batch[1])
        self.eval_images += [hashlib.sha1(x.cpu().numpy().tobytes()).hexdigest() for x in state.batch[0]]

    def eval_end(self, state, logger):
        # torchmetrics keeps the rank-local counts after compute(): tp + fn is one per example it was updated with
        accuracy = next(m for m in state.eval_metrics['eval'].values() if hasattr(m, 'tp'))
        self.eval_counted.append(int((accuracy.tp + accuracy.fn).sum()))

    def fit_end(self, state, logger):
        imp = next(a for a in state.algorithms if isinstance(a, IMP))  # IMP or AdaptiveIMP
        assert imp.level == self.level, (imp.level, self.level)
        torch.save({'weights': unwrap_model(state.model).state_dict(), 'mask': imp.mask if imp.level else None,
                    'eval_seen': self.eval_seen, 'eval_images': self.eval_images, 'train_labels': self.train_labels,
                    'eval_counted': self.eval_counted},
                   f'{self.out}/rank{dist.get_global_rank()}_level{self.level}.pt')


def main(yaml, out, *overrides):
    logging.basicConfig(format='[composer-imp] %(message)s')
    logging.getLogger('composer_imp').setLevel(logging.INFO)
    cfg = load_config(yaml, list(overrides))
    recipe = build_recipe(cfg)

    def make_trainer(level, seed, imp_args):
        trainer = recipe.make_trainer(level, seed, imp_args)
        trainer.state.callbacks.append(DumpRankState(out, level))  # runs from FIT_START on; INIT is not needed
        return trainer

    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != 'overwrite'}
    find_ticket(make_trainer, cfg.save_folder, cfg.levels, target_sparsity=cfg.target_sparsity,
                checkpoint_interval=cfg.checkpoint_interval, seed=cfg.seed, metric=cfg.metric, config=config,
                device=recipe.device)
    if cfg.analysis.enabled:  # on every rank, as run.py does
        a = cfg.analysis
        analyze_run(cfg.save_folder, recipe.analysis_model(), recipe.eval_dataloader, recipe.sweep_data,
                    LandscapeSettings(list(a.betas), a.tolerance, a.recalibrate_bn, a.pairwise, a.planes))


if __name__ == '__main__':
    main(*sys.argv[1:])
