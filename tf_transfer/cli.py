"""Command-line plumbing: flags generated from the config dataclasses, logging set-up.

Imports no TensorFlow: ``--help`` must answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from tf_transfer import config as config_lib
from tf_transfer import logs
from tf_transfer.errors import TransferError


def flag_name(path: str, f) -> str:
    """The CLI flag for a config leaf: its explicit flag, else the field name (phase fields prefixed)."""
    if f.metadata.get("flag"):
        return "--" + f.metadata["flag"]
    section, _, name = path.rpartition(".")
    stem = f"{section}-{name}" if section in ("phase1", "phase2") else name
    return "--" + stem.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per config leaf; values default to 'not given' so --config values survive."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for path, t, f in config_lib.leaves():
        section = path.rpartition(".")[0] or "run"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        default = f.default
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        kwargs = dict(dest=path, default=argparse.SUPPRESS, help=help_text)
        if t is bool:
            group.add_argument(flag_name(path, f), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            if f.metadata.get("const") is not None:
                kwargs.update(nargs="?", const=f.metadata["const"])
            group.add_argument(flag_name(path, f), type=t, metavar=t.__name__.upper(),
                               choices=f.metadata.get("choices"), **kwargs)


def add_publish_flags(parser: argparse.ArgumentParser) -> None:
    """--out, --license and --overwrite: where and how a backbone is published (publish, pretrain)."""
    parser.add_argument("--out", required=True, help="the folder to publish the backbone to (local path or URL)")
    parser.add_argument("--license", default="unspecified", help="the license field of the model card")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def config_from_args(args: argparse.Namespace) -> config_lib.Config:
    """The resolved config: defaults, then --config FILE, then flags given on the command line."""
    base = config_lib.load(args.config) if getattr(args, "config", None) else config_lib.Config()
    overrides = {path: getattr(args, path) for path, _, _ in config_lib.leaves() if hasattr(args, path)}
    return config_lib.apply_overrides(base, overrides)


def setup_logging(log_file: str | Path | None = None, verbose: bool = False) -> logging.Handler | None:
    """Log tf_transfer messages to stdout (and to log_file, if given); see tf_transfer.logs."""
    return logs.setup(log_file, verbose)


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ start-up chatter unless the user asked for it (call before importing TF)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fail(message: str) -> NoReturn:
    """Print a user-facing error and exit with status 2 (as argparse does)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's body: a TransferError (a problem the user can fix) is printed as one line,
    without a traceback, and gives exit status 2; Ctrl-C gives 130."""
    try:
        return body() or 0
    except TransferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def flags_markdown() -> str:
    """The flag reference table of the README, generated from the config (a test keeps them in sync)."""
    rows = ["| flag | config key | default | meaning |", "| --- | --- | --- | --- |"]
    for path, t, f in config_lib.leaves():
        flag = flag_name(path, f)
        if t is bool:
            flag = f"{flag} / --no-{flag[2:]}"
        help_text = f.metadata.get("help", "").replace("|", "\\|")
        if f.metadata.get("choices"):
            help_text += f" One of: {', '.join(f.metadata['choices'])}."
        rows.append(f"| `{flag}` | `{path}` | `{f.default!r}` | {help_text} |")
    return "\n".join(rows)
