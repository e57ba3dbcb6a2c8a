"""Find a lottery ticket with IMP and weight rewinding from a YAML recipe.

    python run.py -f yamls/quickstart.yaml [key=value ...] [--overwrite]
    composer -n 8 run.py -f yamls/r50_imp.yaml

Overrides are OmegaConf dotted keys (levels=3 seed=2 algorithms.IMP.rewind=0ba optimizer.lr=0.05).
"""

import argparse
import io
import logging
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-f', '--file', required=True, help='YAML recipe, e.g. yamls/quickstart.yaml')
    parser.add_argument('--overwrite', action='store_true',
                        help='delete the results of an earlier run in save_folder and start over')
    parser.add_argument('overrides', nargs='*', help='dotted key=value overrides')
    args = parser.parse_args(argv)

    logging.basicConfig(format='[composer-imp] %(message)s')
    logging.getLogger('composer_imp').setLevel(logging.INFO)  # the level lines; Composer's own stay at WARNING
    from composer_imp.config import ConfigError, load_config
    from composer_imp.faults import TrainingDiverged
    from composer_imp.recipes import run_config

    try:
        cfg = load_config(args.file, args.overrides)
        run_config(cfg, overwrite=True if args.overwrite else None)
    except io.UnsupportedOperation:
        raise  # an environment problem (a stream without a file descriptor), not bad input
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f'composer-imp: error: {e}', file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f'composer-imp: training diverged: {e}', file=sys.stderr)
        return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
