"""Logging set-up: tf_transfer's messages on stdout, and copied into a file (a run's log) on request.

Library code only logs (``logging.getLogger(__name__)`` under ``tf_transfer``); commands call
:func:`setup`. TensorFlow-free.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from tf_transfer.errors import TransferError

ROOT = "tf_transfer"


def setup(log_file: str | Path | None = None, verbose: bool = False) -> logging.Handler | None:
    """Log tf_transfer messages to stdout (and to log_file, if given; returns that file's handler)."""
    root = logging.getLogger(ROOT)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_tf_transfer_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        console._tf_transfer_console = True
        root.addHandler(console)
    root.propagate = False
    if log_file is None:
        return None
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler


class _Without(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def hidden(logger: str, text: str) -> Iterator[None]:
    """Drop one known, harmless message of a library's logger while the block runs."""
    quiet, target = _Without(text), logging.getLogger(logger)
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


@contextlib.contextmanager
def to_file(log_file: str | Path) -> Iterator[Path]:
    """Copy tf_transfer's log records into `log_file` while the block runs."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = setup(log_file)
    try:
        yield log_file
    except BaseException as e:
        _record_stop(handler, e)
        raise
    finally:
        logging.getLogger(ROOT).removeHandler(handler)
        handler.close()


def _record_stop(handler: logging.Handler, error: BaseException) -> None:
    """Why the block ended, written to its log file only (the command prints the error on the console): a
    run that fails before its first line of work still says why in its log."""
    if isinstance(error, KeyboardInterrupt | SystemExit):
        message, exc_info = f"stopped: {type(error).__name__}", None
    elif isinstance(error, TransferError):  # a problem the user can fix: the message says it all
        message, exc_info = f"error: {error}", None
    else:
        message, exc_info = f"failed: {type(error).__name__}: {error}", (type(error), error, error.__traceback__)
    handler.handle(logging.LogRecord(ROOT, logging.ERROR, __file__, 0, message, None, exc_info))
