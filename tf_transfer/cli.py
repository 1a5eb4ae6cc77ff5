"""Command-line plumbing: flags generated from the config dataclasses, logging set-up.

Imports no TensorFlow: ``--help`` must answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
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


def quiet_tensorflow() -> bool:
    """Quiet defaults for TensorFlow's C++ and Python logging (call before importing TensorFlow); a
    TF_CPP_MIN_LOG_LEVEL of the user's own wins. Returns whether the defaults apply (the user set none)."""
    ours = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if ours:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)  # deprecation notices meant for TF developers
    return ours


@contextlib.contextmanager
def _stderr_captured():
    """File descriptor 2 into a temporary file while the block runs (C++ libraries write there directly,
    whatever sys.stderr is); yields a list that holds what was written once the block ends."""
    sys.stderr.flush()
    saved, text = os.dup(2), []
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text.append(captured.read().decode("utf-8", "replace"))


def start(verbose: bool = False, log_to_stdout: bool = True) -> str:
    """Start a command that uses TensorFlow: quiet logging defaults, tf_transfer's log on stdout, and
    TensorFlow imported and its devices found with their C++ start-up lines (CUDA probing on a machine
    without a GPU reads like a failure) kept in the debug log instead of on the screen, unless the user
    set TF_CPP_MIN_LOG_LEVEL. Then one line of its own says which devices run the work (on stderr when
    log_to_stdout is False, for commands whose stdout is their output); returns that line."""
    quiet = quiet_tensorflow()
    if log_to_stdout:
        setup_logging(verbose=verbose)
    with _stderr_captured() if quiet else contextlib.nullcontext() as captured:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        tpus = tf.config.list_physical_devices("TPU")
    if captured:
        logging.getLogger(__name__).debug("TensorFlow start-up:\n%s", captured[0])
    line = devices_line(len(gpus), len(tpus), os.cpu_count() or 1)
    if log_to_stdout:
        logging.getLogger(__name__).info("%s", line)
    else:
        print(line, file=sys.stderr)
    return line


def devices_line(gpus: int, tpus: int, cores: int) -> str:
    """What runs the work, in a newcomer's words."""
    accelerators = [f"{n} {kind}{'s' if n > 1 else ''}" for n, kind in ((gpus, "GPU"), (tpus, "TPU")) if n]
    if accelerators:
        return f"Devices: {' and '.join(accelerators)}, and the CPU ({cores} cores)"
    return f"Devices: the CPU ({cores} cores); no GPU found, so training runs on the CPU"


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
