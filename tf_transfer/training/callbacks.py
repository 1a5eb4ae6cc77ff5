"""Keras callbacks for the two-phase recipe: history with phase marks, run state for --resume."""

from __future__ import annotations

import logging
import signal
import time

from tf_transfer import logs
from tf_transfer._keras import keras
from tf_transfer.errors import Preempted
from tf_transfer.folders import RunDir

__all__ = ["HistoryRecorder", "Preempted", "PreemptionSaver", "ProgressLog", "StageFinisher", "StateRecorder",
           "TaskMeans", "quiet_batch_timing"]
log = logging.getLogger(__name__)


class StageFinisher(keras.callbacks.Callback):
    """When a stage's fit completes, save the model's weights and mark the stage done in the run folder,
    before BackupAndRestore deletes its backup (place it after EarlyStopping, which restores the best
    weights at the end, and before BackupAndRestore). A kill at any moment then leaves either the
    backup to resume from or the finished stage, never neither."""

    def __init__(self, run: RunDir, model, stage: str, weights: str, first_epoch: int):
        super().__init__()
        self.run, self.full_model, self.stage, self.weights = run, model, stage, weights
        self.last_epoch = first_epoch

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch + 1

    def on_train_end(self, logs=None):
        self.run.save_weights(self.full_model, self.weights)
        self.run.mark_done(self.stage, self.last_epoch)


class TaskMeans(keras.callbacks.Callback):
    """With several heads Keras logs head_<task>_accuracy per head: add their mean as `accuracy` (and
    `val_accuracy`), so --monitor, early stopping and the best checkpoint watch all tasks at once.
    Place it first: later callbacks see the same logs."""

    def __init__(self, heads: list[str]):
        super().__init__()
        self.heads = heads

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            values = [logs[k] for k in (f"{prefix}{h}_accuracy" for h in self.heads) if k in logs]
            if values:
                logs[f"{prefix}accuracy"] = sum(float(v) for v in values) / len(values)


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def quiet_batch_timing():
    """Hide Keras' "callback is slow compared to the batch time" warning while fitting.

    A head trained on cached features takes a millisecond or two per step, so any per-step callback
    (our pre-emption check) trips it although its cost is negligible in the run.
    """
    return logs.hidden("tensorflow", "is slow compared to the batch time")


class HistoryRecorder(keras.callbacks.Callback):
    """Record one entry per epoch in the run folder (1-based epoch, phase, metrics, learning rate)."""

    def __init__(self, run: RunDir, phase: int, stage: str = ""):
        super().__init__()
        self.run = run
        self.phase, self.stage = phase, stage or f"phase{phase}"
        self._start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, "phase": self.phase, "stage": self.stage,
                 **{k: _plain(v) for k, v in (logs or {}).items()},
                 "seconds": round(time.monotonic() - self._start, 3)}
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            entry["learning_rate"] = _plain(keras.backend.get_value(lr))
        self.run.record_epoch(entry)


class StateRecorder(keras.callbacks.Callback):
    """After each epoch's backup, record where the run is, so --resume can say where it continues."""

    def __init__(self, run: RunDir, phase: int):
        super().__init__()
        self.run = run
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        self.run.update_state(phase=self.phase, last_epoch=epoch + 1)


class PreemptionSaver(keras.callbacks.Callback):
    """On SIGTERM (how schedulers and cloud VMs pre-empt), save a BackupAndRestore checkpoint at the
    end of the current step and stop with Preempted, so that --resume loses nothing.

    Place it after the BackupAndRestore callback it saves through. With epoch-level backups the
    partial epoch is recorded as the previous one finished (its steps run again on resume, with the
    weights they already produced); with step-level backups (--save-every) it resumes at the next step.
    """

    def __init__(self, backup: keras.callbacks.BackupAndRestore):
        super().__init__()
        self.backup = backup
        # This batch hook never reads the logs: declaring so spares Keras a device-to-host copy of the
        # metrics after every step (3x the step time of a head trained on cached features).
        self._supports_tf_logs = True
        self._requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self._requested = True

    def _restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_train_begin(self, logs=None):
        self._requested = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals to the caller
            self._previous = None

    def on_train_batch_end(self, batch, logs=None):
        if not self._requested:
            return
        # tf_keras saves the counters held in these variables (its _backup ignores its arguments).
        state = self.backup._training_state
        epoch = self.backup._current_epoch
        if isinstance(self.backup.save_freq, int):
            state._ckpt_saved_epoch.assign(epoch)
            state._ckpt_saved_batch.assign(batch)
            where = f"epoch {epoch + 1}, after step {batch + 1}"
        else:  # epoch-level restore: record the previous epoch as the last one finished
            state._ckpt_saved_epoch.assign(epoch - 1)
            where = f"epoch {epoch + 1} (its steps run again on resume)"
        self.backup._backup(epoch=epoch, batch=batch)
        self._restore()
        raise Preempted(f"SIGTERM: saved the training state in {where}")

    def on_epoch_end(self, epoch, logs=None):
        """A signal that came during the epoch's last steps or its validation: the epoch is complete, so
        record it as finished and stop (resume starts at the next epoch)."""
        if not self._requested:
            return
        state = self.backup._training_state
        state._ckpt_saved_epoch.assign(epoch)
        steps = (self.params or {}).get("steps") or 1
        state._ckpt_saved_batch.assign(steps - 1)  # step-level backups: the last step of this epoch
        self.backup._backup(epoch=epoch, batch=steps - 1)
        self._restore()
        raise Preempted(f"SIGTERM: saved the training state after epoch {epoch + 1}")

    def on_train_end(self, logs=None):
        self._restore()
        if self._requested:  # after the last epoch: the stage is finished and recorded
            raise Preempted("SIGTERM: the stage had finished and is saved")


class ProgressLog(keras.callbacks.Callback):
    """Log a fit's metrics at each epoch's end and during it every tenth of the epoch or 20 steps, whichever
    is longer, as "<what> epoch e/E, step s/S: name value, ..." (the run log shows progress without
    Keras' progress bar)."""

    def __init__(self, what: str, steps: int, names: dict[str, str]):
        super().__init__()
        self.what, self.steps, self.names = what, steps, names  # names: {logs key: how the log line says it}
        self.every = max(20, steps // 10)
        self._epoch = 0

    def _line(self, logs: dict, prefix: str = "") -> str:
        return ", ".join(f"{label} {float(logs[prefix + key]):.4g}" for key, label in self.names.items()
                         if prefix + key in logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0 and batch + 1 < self.steps:
            log.info("%s epoch %d/%d, step %d/%d: %s", self.what, self._epoch + 1, self.params.get("epochs", 0),
                     batch + 1, self.steps, self._line(logs or {}))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        held_out = self._line(logs, "val_")
        log.info("%s epoch %d/%d done: %s%s", self.what, epoch + 1, self.params.get("epochs", 0), self._line(logs),
                 f"; validation: {held_out}" if held_out else "")
