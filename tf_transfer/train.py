"""Train a classifier by transfer learning, in two phases, and export it.

    python -m tf_transfer.train --data FOLDER --backbone NAME --name NAME

Phase 1 trains the head on a frozen backbone; phase 2 unfreezes the top of the backbone and
continues at a lower learning rate. Every run gets a self-describing folder
(<runs_dir>/<name>/<timestamp>/): config, split manifest, data summary, skipped files, history,
metrics, TensorBoard logs, checkpoints and the export path.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tf_transfer import cli
from tf_transfer import config as config_lib
from tf_transfer.errors import Preempted, RunError
from tf_transfer.folders import RunDir

log = logging.getLogger("tf_transfer.train")  # also when run as __main__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tf_transfer.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="JSON config file (as saved in every run); flags override it")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                        help="continue an interrupted run: its folder, or the latest run of --name")
    parser.add_argument("--list-backbones", action="store_true", help="list the registered backbones and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    cli.add_config_flags(parser)
    return parser


def _list_backbones() -> None:
    from tf_transfer.models import backbones

    for name in backbones.names():
        spec = backbones.REGISTRY[name]
        print(f"{name:32s} {spec.image_size:4d}px  preprocess={spec.family}")


def _resume_target(args, config: config_lib.Config) -> tuple[config_lib.Config, RunDir]:
    """--resume: the run folder to continue, and its saved config."""
    given = [path for path, _, _ in config_lib.leaves() if hasattr(args, path) and path not in ("name", "runs_dir")]
    if given or args.config:
        raise RunError("--resume continues a run with its saved config; drop --config and the other flags "
                       f"(got {', '.join(given) or '--config'})")
    run = RunDir.latest(config.runs_dir, config.name) if args.resume == "latest" else RunDir.existing(args.resume)
    return config_lib.load(run.config_file), run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = cli.config_from_args(args)
        if args.print_config:
            print(config.to_json())
            return 0
        if args.list_backbones:
            cli.quiet_tensorflow()
            _list_backbones()
            return 0
        cli.start()
        config, resume = _resume_target(args, config) if args.resume else (config, None)
        from tf_transfer.workflows import recipe

        try:
            recipe.run(config, resume.location if resume else None)
        except Preempted as e:
            log.warning("Pre-empted. %s; continue with: python -m tf_transfer.train --resume --name %s "
                        "--runs-dir %s", e, config.name, config.runs_dir)
            return 143  # 128 + SIGTERM, as if the signal had ended the process
        return 0

    return cli.run_command(body)


if __name__ == "__main__":
    sys.exit(main())
