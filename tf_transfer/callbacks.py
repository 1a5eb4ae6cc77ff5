"""Keras callbacks for the two-phase recipe: history with phase marks, run state for --resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tf_transfer._keras import keras

HISTORY_LOG = "history.jsonl"
STATE = "state.json"


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def write_json_atomic(path: Path, data) -> None:
    """Write JSON so that a kill leaves either the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class HistoryRecorder(keras.callbacks.Callback):
    """Append one JSON line per epoch (1-based epoch, phase, metrics, learning rate)."""

    def __init__(self, run_dir: Path, phase: int):
        super().__init__()
        self.path = Path(run_dir) / HISTORY_LOG
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, "phase": self.phase, **{k: _plain(v) for k, v in (logs or {}).items()}}
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            entry["learning_rate"] = _plain(keras.backend.get_value(lr))
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


class StateRecorder(keras.callbacks.Callback):
    """After each epoch's backup, record where the run is, so --resume can say where it continues."""

    def __init__(self, run_dir: Path, phase: int):
        super().__init__()
        self.path = Path(run_dir) / STATE
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        state = read_state(self.path.parent)
        state.update({"phase": self.phase, "last_epoch": epoch + 1})
        write_json_atomic(self.path, state)


def read_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE
    return json.loads(path.read_text()) if path.exists() else {}


def read_history(run_dir: Path) -> list[dict]:
    """Epoch entries in order; an epoch recorded twice (re-run after a kill) keeps its last record."""
    path = Path(run_dir) / HISTORY_LOG
    by_epoch: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                by_epoch[entry["epoch"]] = entry
    return [by_epoch[k] for k in sorted(by_epoch)]
