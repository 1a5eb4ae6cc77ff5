"""The errors tf_transfer raises on user input and environment problems.

Every command catches :class:`TransferError` and prints its message (no traceback): each message
names what was wrong (the file, row, flag or value) and what was expected. TensorFlow-free.
"""

from __future__ import annotations


class TransferError(Exception):
    """Base class: a problem the user can fix; the message says what was expected."""


class ConfigError(TransferError, ValueError):
    """A configuration value or file is not what tf_transfer expects."""


class DataError(TransferError, ValueError):
    """The data cannot be used: the message names the problem and what was expected."""


class BackboneError(TransferError, ValueError):
    """A backbone name, handle or weights file cannot be used."""


class DistributeError(TransferError, ValueError):
    """A strategy, precision or path cannot be used on this hardware."""


class ExportError(TransferError, RuntimeError):
    """An export could not be written or does not behave like the model it came from."""


class TuneError(TransferError, ValueError):
    """The search space or a tuning option is not usable."""


class RunError(TransferError, RuntimeError):
    """A run folder cannot be created, resumed or read."""


class Preempted(TransferError):
    """Training stopped on SIGTERM after saving its state; rerun with --resume."""
