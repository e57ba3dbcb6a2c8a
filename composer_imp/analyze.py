"""The analysis command: the error landscape of a finished IMP run made from a YAML recipe.

    python -m composer_imp.analyze SAVE_FOLDER [--betas 0,0.1,...,1] [--tolerance 0.01] [--recalibrate-bn] [--planes 21]
    python -m composer_imp.analyze SAVE_FOLDER --instability     # Appendix D: two dense copies from w_τ
    python -m composer_imp.analyze SAVE_FOLDER --perturbation    # Appendix D: w_τ perturbed by the level-1 distance

Rebuilds the run's recipe from ``SAVE_FOLDER/config.yaml`` (the one place outside ``run.py`` that does), takes
the model as the recipe's Trainer holds it, and runs :func:`composer_imp.analysis.analyze_run` — or
:func:`composer_imp.replicates.analyze_replicates` on a folder of ``replicate_XX`` runs. For a run made from
Python, call those functions with your own model and eval loader.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from composer_imp.analysis import LandscapeSettings, analyze_run
from composer_imp.config import config_from_dict
from composer_imp.connectivity import DEFAULT_BETAS
from composer_imp.criteria import DEFAULT_TOLERANCE
from composer_imp.recipes import build_recipe
from composer_imp.replicates import analyze_replicates
from composer_imp.run_folder import RunFolder
from composer_imp.stability import instability, perturbation

__all__ = ['main']

log = logging.getLogger('composer_imp.analyze')  # also when run as __main__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('save_folder')
    parser.add_argument('--betas', default=','.join(str(b) for b in DEFAULT_BETAS), help='comma-separated β grid')
    parser.add_argument('--tolerance', type=float, default=None,
                        help=f'matching / connectivity tolerance (error); default: ε on a folder of replicates, else '
                             f'{DEFAULT_TOLERANCE} (a replicate analysed alone: give the replicates\' ε)')
    parser.add_argument('--recalibrate-bn', action='store_true', help='recompute BatchNorm statistics per network')
    parser.add_argument('--no-pairwise', action='store_true', help='successive pairs only')
    parser.add_argument('--planes', type=int, default=0, metavar='N',
                        help='also N x N error slices of the plane through w_L, its projection and w_L+1 (paper: 51)')
    parser.add_argument('--overwrite', action='store_true', help='replace an analysis.json made with other settings')
    parser.add_argument('--instability', action='store_true',
                        help='Appendix D: train two dense copies from the rewind point with other data orders; barrier')
    parser.add_argument('--perturbation', action='store_true',
                        help='Appendix D: train from w_τ perturbed by the level-1 projection distance; connectivity to w_0')
    args = parser.parse_args(argv)
    logging.basicConfig(format='[composer-imp] %(message)s')
    logging.getLogger('composer_imp').setLevel(logging.INFO)
    try:
        try:
            betas = [float(b) for b in args.betas.split(',')]
        except ValueError:
            raise ValueError(f'--betas must be comma-separated numbers in [0, 1] such as 0,0.5,1; got {args.betas!r}.') from None
        # Checked before the recipe is built or anything is read or written.
        settings = LandscapeSettings(betas, args.tolerance, args.recalibrate_bn, not args.no_pairwise, args.planes)
        folder = RunFolder(args.save_folder)
        replicated = bool(folder.replicates()) and not os.path.isfile(folder.config)
        run = folder.replicates()[0] if replicated else folder
        recipe = build_recipe(config_from_dict(run.read_config()))
        if args.instability or args.perturbation:
            tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
            for run_experiment, wanted in ((instability, args.instability), (perturbation, args.perturbation)):
                if wanted:
                    result = run_experiment(recipe.make_trainer, args.save_folder, betas=betas, tolerance=tolerance)
                    log.info('%s written to %s', result['experiment'], folder.stability_result(result['experiment']))
            return 0
        options = (recipe.analysis_model(), recipe.eval_dataloader, recipe.sweep_data, settings, args.overwrite)
        if replicated:
            result = analyze_replicates(args.save_folder, *options)
            log.info('analysis of %d replicates written to %s; ε = %.2f points; connected iff matching: %s',
                     len(result['replicates']), os.path.join(folder.analysis_dir, 'replicates.md'),
                     100 * result['epsilon'], result['connected_iff_matching'])
            return 0
        result = analyze_run(args.save_folder, *options)
    except (FileNotFoundError, ValueError) as e:
        print(f'composer-imp analyze: error: {e}', file=sys.stderr)
        return 2
    log.info('analysis of %d levels written to %s; connected iff matching: %s', len(result['levels']),
             folder.analysis_dir, result['connected_iff_matching'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
