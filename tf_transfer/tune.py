"""Search hyperparameters of the whole transfer recipe with keras-tuner: each trial is one two-phase run.

    python -m tf_transfer.tune --data FOLDER --backbone NAME --max-trials 20 --algorithm bayesian

Trials run on a split prepared once for the search and are scored by validation accuracy. The best
trial is written as a complete config (``best_config.json``) that ``python -m tf_transfer.train
--config best_config.json`` reproduces. Re-running the same command resumes an interrupted search.
``--search-space FILE`` (JSON) widens or replaces axes and ``--fix KEY=VALUE`` pins one (see the README).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tf_transfer import cli, fs
from tf_transfer.errors import TuneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="base config JSON; flags override it")
    parser.add_argument("--max-trials", type=int, default=10, help="trials to run (random, bayesian)")
    parser.add_argument("--algorithm", default="random", choices=("random", "bayesian", "hyperband"))
    parser.add_argument("--max-epochs", type=int, help="hyperband: most epochs (both phases) a trial gets")
    parser.add_argument("--search-space", metavar="FILE", help="JSON object of axes that widen or replace defaults")
    parser.add_argument("--fix", action="append", default=[], metavar="KEY=VALUE", help="pin an axis (repeatable)")
    parser.add_argument("--tuning-dir", default="tuning", help="folder of the search (resumed when it exists)")
    cli.add_config_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        base = cli.config_from_args(args)
        cli.start()
        from tf_transfer.workflows import tuning

        try:
            overrides = json.loads(fs.path(args.search_space).read_text()) if args.search_space else {}
        except (OSError, json.JSONDecodeError) as e:
            raise TuneError(f"--search-space {args.search_space}: expected a readable JSON file ({e})") from None
        space = tuning.search_space(overrides, tuning.parse_fixed(args.fix))
        tuning.hyperparameters(space)  # validate before any work
        tuning.tune(base, space, args.algorithm, args.max_trials, args.tuning_dir, args.max_epochs)
        return 0

    return cli.run_command(body)


if __name__ == "__main__":
    sys.exit(main())
