"""The folders tf_transfer writes, and the one way it writes files: atomically.

- :class:`RunDir` owns a run folder: every file name in it, the resume state, the per-epoch history,
  the chief/worker write rule of multi-worker training and the run log. Nothing else builds a path
  inside a run folder.
- :func:`atomic_write`, :func:`write_json` and :func:`atomic_dir` are the only writers: a kill at any
  moment leaves the old file (or folder) or the new one, never half of one. Temporary names carry the
  host, process and a random part, so processes on several machines sharing a folder never collide,
  and :func:`sweep_partials` removes the leftovers of dead processes.

TensorFlow-free: weights are written through the model's own ``save_weights``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tf_transfer import fs, logs
from tf_transfer.errors import RunError
from tf_transfer.fs import GPath, cache_home  # noqa: F401 (cache_home: part of this module's API)

log = logging.getLogger(__name__)

PARTIAL = ".partial-"
STALE_SECONDS = 24 * 3600  # a temporary entry this old belongs to no live writer on any machine


# --- atomic writes ---------------------------------------------------------------------------------

def _token() -> str:
    host = socket.gethostname().replace("-", "_").replace(".", "_")[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def partial_path(path: Path | GPath) -> Path | GPath:
    """A unique hidden sibling of `path` to write first; the name keeps path's suffix (Keras reads
    the weights format from it)."""
    return path.with_name(f"{PARTIAL}{_token()}-{path.name}")


def atomic_write(path: str | Path | GPath, write: Callable[[Path], Any]) -> Path | GPath:
    """Call write(tmp) on a temporary local sibling, then rename it onto `path` (atomic on one file
    system). For a URL, tmp is a local file that is copied to a hidden sibling and renamed into place."""
    path = fs.path(path)
    if isinstance(path, GPath):
        return _atomic_upload(path, write)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _atomic_upload(path: GPath, write: Callable[[Path], Any]) -> GPath:
    with tempfile.TemporaryDirectory(prefix=PARTIAL) as folder:
        local = Path(folder) / path.name
        write(local)
        remote = partial_path(path)
        try:
            fs.upload(local, remote)
            remote.replace(path)
        except BaseException:
            with contextlib.suppress(Exception):
                remote.unlink(missing_ok=True)
            raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: str | Path, rows) -> Path:
    """Rows (the first one the header) as a UTF-8 CSV file."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)

    return atomic_write(path, write)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with fs.path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model_weights(model, path: str | Path) -> Path:
    """Every weight of a Keras model, by variable name, in one .npz file (written atomically).

    Keras' own formats do not fit a run's checkpoints: the layer-ordered HDF5 format depends on which
    layers are trainable (frozen layers list their weights in another order), and the .weights.h5
    format also restores metrics and optimizer state, which a model compiled for another stage lacks.
    """
    names = [w.name for w in model.weights]
    if len(set(names)) != len(names):  # names are unique in tf_transfer's models; keep order as a fallback
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    arrays = {f"w{i}": np.asarray(w.numpy()) for i, w in enumerate(model.weights)}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, names=np.array(names), **arrays)

    return atomic_write(path, write)


def load_model_weights(model, path: str | Path) -> None:
    """Assign the weights saved by save_model_weights, by name; RunError naming what does not match."""
    with np.load(path, allow_pickle=False) as saved:
        stored = {str(n): saved[f"w{i}"] for i, n in enumerate(saved["names"])}
    names = [w.name for w in model.weights]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    missing = [n for n in names if n not in stored]
    wrong = [n for n, w in zip(names, model.weights, strict=True) if n in stored and stored[n].shape != tuple(w.shape)]
    if missing or wrong or len(stored) != len(names):
        raise RunError(f"{path} does not fit this model: {len(missing)} weight(s) missing (e.g. {missing[:3]}), "
                       f"{len(wrong)} of another shape (e.g. {wrong[:3]}), {len(stored)} saved for {len(names)}")
    for name, w in zip(names, model.weights, strict=True):
        w.assign(stored[name])


def read_json(path: str | Path | GPath, default: Any = None) -> Any:
    path = fs.path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def publish_dir(tmp: Path, final: Path, replace: bool = False) -> bool:
    """Rename a finished folder into place; returns False if another writer's folder is there.

    With replace, an existing folder is first renamed aside (atomically) and then removed, so a reader
    never sees a mix of the two and two concurrent writers never delete each other's work.
    """
    for _ in range(3):
        try:
            os.rename(tmp, final)
            return True
        except OSError:
            if not final.exists():
                raise
            if not replace:
                break
            with contextlib.suppress(FileNotFoundError):  # someone else moved it first
                trash = final.with_name(f"{PARTIAL}{_token()}-old-{final.name}")
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return False


@contextlib.contextmanager
def atomic_dir(final: str | Path | GPath, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes `final` (see publish_dir), on any error
    (or a kill) nothing appears at `final`. For a URL the folder is filled locally, copied to a hidden
    folder there and then moved into place."""
    final = fs.path(final)
    if isinstance(final, GPath):
        with tempfile.TemporaryDirectory(prefix=PARTIAL) as folder:
            yield Path(folder)
            remote = partial_path(final)
            try:
                fs.upload(Path(folder), remote)
                if replace:
                    fs.rmtree(final)
                remote.rename(final)
            finally:
                fs.rmtree(remote)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final, replace)


def _owner_alive(name: str) -> bool:
    """Whether the process that named a temporary entry may still be writing it."""
    try:
        host, pid = name[len(PARTIAL):].split("-")[:2]
        if host != _token().split("-")[0]:
            return True  # another machine: only age tells
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError, OSError):
        return True


def sweep_partials(folder: str | Path) -> int:
    """Remove temporary entries left in `folder` by dead writers (or older than a day); returns how many."""
    folder, removed = fs.path(folder), 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if not entry.name.startswith(PARTIAL):
            continue
        try:
            old = time.time() - entry.lstat().st_mtime > STALE_SECONDS
        except FileNotFoundError:
            continue
        if old or not _owner_alive(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                fs.rmtree(entry)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed += 1
    if removed:
        log.info("Removed %d temporary file(s) left by interrupted writers in %s", removed, folder)
    return removed


# --- the run folder ---------------------------------------------------------------------------------

class RunDir:
    """A run folder: <runs_dir>/<name>/<timestamp>/ (or cluster-<id>/ for multi-worker runs).

    Only the chief of a multi-worker job writes the shared records (config, split, history, state,
    metrics, report); other workers' weights go to ``workers/worker-<i>/`` and their log to
    ``worker-<i>.log``, so no two processes write one file.
    """

    CONFIG = "config.json"
    VERSIONS = "versions.json"
    SPLIT_MANIFEST = "split_manifest.csv"
    DATA_SUMMARY = "data_summary.json"
    SKIPPED = "skipped_files.csv"
    HISTORY_LOG = "epochs.jsonl"  # not history.jsonl: ram:// mistakes a name that prefixes another for a folder
    HISTORY = "history.json"
    STATE = "state.json"
    METRICS = "metrics.json"
    METRICS_TEXT = "metrics.txt"
    PHASE1_METRICS = "phase1_metrics.json"
    REPORT = "report.html"
    PLOTS = "plots"
    LOG = "run.log"
    TENSORBOARD = "tensorboard"
    CHECKPOINTS = "checkpoints"
    EXPORT_PATH = "export_path.txt"
    BASELINE = "baseline_scratch"
    HF_CHECKPOINT = "hf_checkpoint"  # a text encoder adapted by pretrain --method mlm, in the Hugging Face layout
    WORKERS = "workers"

    def __init__(self, path: str | Path | GPath, chief: bool = True, worker: int = 0):
        where = fs.path(path)
        self.chief = chief
        self.worker = worker
        # A run folder at a URL is worked in a local mirror (Keras callbacks, plots and logs write local
        # files) and copied to the URL after every epoch, state change and at the end (sync).
        self.remote: GPath | None = where if isinstance(where, GPath) else None
        self.path: Path = self._pull(self.remote) if self.remote else where
        self._synced: dict[str, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"RunDir({self.location!r}{'' if self.chief else f', worker={self.worker}'})"

    @property
    def location(self) -> str:
        """Where the run folder is, as the user named it (a URL for a remote run folder)."""
        return str(self.remote or self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # --- finding and creating run folders

    @classmethod
    def create(cls, runs_dir: str | Path, name: str) -> RunDir:
        """A new, empty run folder named by the current time (suffixed -2, -3, ... if taken)."""
        root = fs.path(runs_dir) / name
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1, 1000):
            path = root / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise RunError(f"could not create a new run folder under {root}")

    @classmethod
    def for_cluster(cls, runs_dir: str | Path, name: str, cluster_id: str, chief: bool, worker: int) -> RunDir:
        """The folder every worker of one cluster agrees on (and a restarted cluster finds again)."""
        path = fs.path(runs_dir) / name / f"cluster-{cluster_id}"
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, chief, worker)

    @classmethod
    def latest(cls, runs_dir: str | Path, name: str) -> RunDir:
        root = fs.path(runs_dir) / name
        runs = sorted(p for p in root.iterdir() if (p / cls.CONFIG).is_file()) if root.is_dir() else []
        if not runs:
            raise RunError(f"--resume: no earlier run of {name!r} under {root}")
        return cls(runs[-1])

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """An existing run folder; RunError if `path` is not one."""
        run = cls(path)
        if not run.config_file.is_file():
            raise RunError(f"{run.location} is not a run folder (no {cls.CONFIG}); "
                           "expected <runs_dir>/<name>/<timestamp>")
        return run

    def started(self) -> bool:
        """Whether this folder holds a run that got as far as saving its config and split."""
        return self.config_file.is_file() and (self.path / self.SPLIT_MANIFEST).is_file()

    def baseline(self) -> RunDir:
        """The from-scratch baseline's own run folder inside this one."""
        path = self.path / self.BASELINE
        path.mkdir(parents=True, exist_ok=True)
        return RunDir(path, self.chief, self.worker)

    # --- paths

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    def locate(self, name: str) -> str:
        """Where a file of this run is for the user: at the URL for a remote run folder."""
        return str((self.remote or self.path) / name)

    @property
    def log_file(self) -> Path:
        return self.path / (self.LOG if self.chief else f"worker-{self.worker}.log")

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def plots_dir(self) -> Path:
        return self.path / self.PLOTS

    @property
    def report_file(self) -> Path:
        return self.path / self.REPORT

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    def _own(self) -> Path:
        """Where this process writes weights: the run folder (chief) or its worker folder."""
        return self.path if self.chief else self.path / self.WORKERS / f"worker-{self.worker}"

    def weights_file(self, which: str) -> Path:
        """checkpoints/<which>.weights.npz (which: phase1_final, final, ...): every weight by variable name
        (see save_model_weights)."""
        return self._own() / self.CHECKPOINTS / f"{which}.weights.npz"

    def best_weights_file(self, stage: str) -> Path:
        """The best epoch's weights of a stage (phase1, phase2, phase2.1, ...)."""
        return self._own() / self.CHECKPOINTS / f"best_{stage}.weights.h5"

    def backup_dir(self, stage: str) -> Path:
        """BackupAndRestore's folder for a stage (every worker passes the same one: Keras separates them)."""
        return self.path / self.CHECKPOINTS / f"backup_{stage}"

    # --- writing (the chief writes shared records; workers' calls are no-ops)

    def write_json(self, name: str, data: Any) -> None:
        if self.chief:
            write_json(self.path / name, data)

    def read_json(self, name: str, default: Any = None) -> Any:
        return read_json(self.path / name, default)

    def write_text(self, name: str, text: str) -> None:
        if self.chief:
            write_text(self.path / name, text)

    def save_config(self, config) -> None:
        self.write_text(self.CONFIG, config.to_json() + "\n")

    def save_weights(self, model, which: str) -> Path:
        return save_model_weights(model, self.weights_file(which))

    def load_weights(self, model, which: str) -> None:
        path = self.weights_file(which)
        if not path.is_file():
            raise RunError(f"{self.location} has no {path.relative_to(self.path)}; expected a run that got that far")
        load_model_weights(model, path)

    def has_weights(self, which: str) -> bool:
        return self.weights_file(which).is_file()

    # --- resume state and history

    def state(self) -> dict:
        """Where the run is: {'phase', 'last_epoch', 'done': {step: result}} ({} for a new run)."""
        return self.read_json(self.STATE, {}) or {}

    def update_state(self, **changes: Any) -> dict:
        state = {**self.state(), **changes}
        self.write_json(self.STATE, state)
        self.sync()
        return state

    def run_id(self) -> str:
        """A random id for this run, kept in its state (exports carry it, so a resumed run finds its export)."""
        state = self.state()
        if "run_id" not in state:
            state = self.update_state(run_id=uuid.uuid4().hex)
        return state["run_id"]

    def done(self, step: str) -> Any:
        """The recorded result of a finished step (None if it has not finished)."""
        return self.state().get("done", {}).get(step)

    def mark_done(self, step: str, result: Any = True) -> None:
        state = self.state()
        self.update_state(done={**state.get("done", {}), step: result})

    def record_epoch(self, entry: dict) -> None:
        """Append one epoch's metrics to epochs.jsonl (flushed to disk: it survives a kill)."""
        if not self.chief:
            return
        with (self.path / self.HISTORY_LOG).open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.sync()

    def epochs(self) -> list[dict]:
        """Epoch entries in order; an epoch recorded twice (re-run after a kill) keeps its last record."""
        path = self.path / self.HISTORY_LOG
        by_epoch: dict[int, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    by_epoch[int(entry["epoch"])] = entry
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):  # a line cut by a kill
                    continue
        return [by_epoch[k] for k in sorted(by_epoch)]

    def write_history(self, epochs: list[dict], stages: list[dict]) -> None:
        """history.json: every epoch, the stage boundaries, and phase_boundary (last epoch of phase 1)."""
        boundary = next((s["last_epoch"] for s in stages if s.get("phase") == 1), 0)
        self.write_json(self.HISTORY, {"phase_boundary": boundary, "stages": stages, "epochs": epochs})

    def history(self) -> dict:
        return self.read_json(self.HISTORY, {"phase_boundary": 0, "stages": [], "epochs": []})

    # --- data split

    def write_split(self, summary: dict, rows: list[list], skipped: dict[str, str], tasks: list[str] = ()) -> None:
        """The split manifest (split,label,class,key,sha256, then a column per named task), the data summary
        and the skipped-file report."""
        if not self.chief:
            return
        header = ["split", "label", "class", "key", "sha256", *(f"task:{t}" for t in tasks)]
        write_csv(self.path / self.SPLIT_MANIFEST, [header, *rows])
        write_csv(self.path / self.SKIPPED, [["path", "reason"], *sorted(skipped.items())])
        self.write_json(self.DATA_SUMMARY, summary)

    def read_split(self) -> tuple[dict, list[dict], dict[str, str]]:
        """(data summary, manifest rows as dicts, {skipped path: reason}) as write_split saved them."""
        try:
            summary = self.read_json(self.DATA_SUMMARY)
            with (self.path / self.SPLIT_MANIFEST).open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            with (self.path / self.SKIPPED).open(newline="", encoding="utf-8") as f:
                skipped = {row["path"]: row["reason"] for row in csv.DictReader(f)}
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise RunError(f"{self.location}: the saved data split cannot be read ({e})") from None
        if summary is None:
            raise RunError(f"{self.location} has no {self.DATA_SUMMARY}; expected a run folder")
        return summary, rows, skipped

    # --- outputs

    def write_export_path(self, path: str | Path) -> None:
        self.write_text(self.EXPORT_PATH, f"{path}\n")

    def export_path(self) -> Path | GPath | None:
        file = self.path / self.EXPORT_PATH
        return fs.path(file.read_text(encoding="utf-8").strip()) if file.is_file() else None

    # --- the run log

    @contextlib.contextmanager
    def logging(self) -> Iterator[Path]:
        """Copy tf_transfer's log records into this run's log file while the block runs (and, for a
        remote run folder, copy the folder to its URL when the block ends, however it ends)."""
        with logs.to_file(self.log_file) as path:
            try:
                yield path
            finally:
                self.sync()

    # --- a remote run folder's local mirror

    def _pull(self, remote: GPath) -> Path:
        """The local mirror of the remote folder, with every remote file it lacks (after a kill on this
        machine the mirror is ahead of the URL; on a new machine it starts empty)."""
        mirror = fs.cache_dir("runs", f"{remote} worker={self.worker}") / remote.name
        if not remote.is_dir():
            shutil.rmtree(mirror, ignore_errors=True)  # an earlier run of the same name, since deleted
        else:
            fs.download(remote, mirror, overwrite=False)
        mirror.mkdir(parents=True, exist_ok=True)
        return mirror

    def _mine(self, rel: str) -> bool:
        """Whether this process copies the file: the chief the shared records, a worker its own files."""
        if rel.startswith(PARTIAL) or f"/{PARTIAL}" in rel:
            return False
        own = rel.startswith(f"{self.WORKERS}/worker-{self.worker}/") or rel == f"worker-{self.worker}.log"
        theirs = rel.startswith(f"{self.WORKERS}/") or (rel.startswith("worker-") and rel.endswith(".log"))
        return own if not self.chief else not theirs

    def sync(self) -> None:
        """Copy the files of this process that changed (or went) since the last sync to the URL."""
        if self.remote is None:
            return
        seen = set()
        for f in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = f.relative_to(self.path).as_posix()
            if not self._mine(rel):
                continue
            seen.add(rel)
            st = f.stat()
            if self._synced.get(rel) != (st.st_size, st.st_mtime_ns):
                fs.upload(f, self.remote / rel)
                self._synced[rel] = (st.st_size, st.st_mtime_ns)
        for rel in sorted(set(self._synced) - seen):  # removed locally (rotated checkpoints, finished backups)
            with contextlib.suppress(FileNotFoundError):
                (self.remote / rel).unlink(missing_ok=True)
            del self._synced[rel]


# --- exported models --------------------------------------------------------------------------------

def is_version_name(name: str) -> bool:
    """TF Serving's version folders are plain ASCII decimal numbers ('٣' is a digit to Python, not to it)."""
    return name.isascii() and name.isdigit() and len(name) <= 18


class ModelDir:
    """<export_dir>/<name>/: the integer version folders TF Serving watches, and each version's files.

    A version is complete when its folder holds saved_model.pb; tf_transfer writes a version in a hidden
    staging folder and renames it into place only after it has been verified, so TF Serving (which
    loads any new integer folder within a second) never sees an incomplete or unverified one.
    """

    SAVED_MODEL = "saved_model.pb"
    LABELS = "labels.txt"
    CONFIG = "config.json"
    METRICS = "metrics.json"
    SAMPLES = "assets.extra/verify_samples.json"
    WARMUP = "assets.extra/tf_serving_warmup_requests"
    TFLITE = "tflite"
    TFLITE_LABELS = "tflite/labels.txt"
    TASKS = "tasks.json"  # with several heads: each task's kind, outputs, labels file and thresholds

    @staticmethod
    def task_labels(task: str) -> str:
        """The labels file of one named task (labels.txt is the one-task model's)."""
        return f"labels_{task}.txt"

    def __init__(self, path: str | Path | GPath):
        self.path = fs.path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @staticmethod
    def is_version(path: Path) -> bool:
        """Whether `path` is a complete version folder (a real folder holding saved_model.pb)."""
        return is_version_name(path.name) and path.is_dir() and not path.is_symlink() \
            and (path / ModelDir.SAVED_MODEL).is_file()

    def versions(self) -> list[int]:
        """Complete versions, ascending (stray files, partial and non-numeric entries are ignored)."""
        if not self.path.is_dir():
            return []
        return sorted(int(p.name) for p in self.path.iterdir() if self.is_version(p))

    def version_path(self, version: int) -> Path | GPath:
        return self.path / str(version)

    def find(self, run_id: str) -> Path | None:
        """The complete version exported by the run with this id, if there is one."""
        for version in reversed(self.versions()):
            config = read_json(self.version_path(version) / self.CONFIG, {}) or {}
            if config.get("run", {}).get("id") == run_id:
                return self.version_path(version)
        return None

    def latest(self) -> Path:
        versions = self.versions()
        if not versions:
            raise RunError(f"{self.path} holds no exported version; expected {self.path}/<version>/{self.SAVED_MODEL}")
        return self.version_path(versions[-1])

    def _next_free(self) -> int:
        taken = [int(p.name) for p in self.path.iterdir() if is_version_name(p.name)] if self.path.is_dir() else []
        return max(taken, default=0) + 1

    def publish(self, staged: Path) -> Path | GPath:
        """Rename a finished staging folder into place as the next free version; returns its path.

        For a URL the local staging folder is first copied to a hidden folder there (saved_model.pb last)."""
        source: Path | GPath = staged
        if isinstance(self.path, GPath):
            source = partial_path(self.path / "version")
            fs.upload(staged, source)
        try:
            for _ in range(100):  # another exporter may claim the same number: take the next one
                final = self.version_path(self._next_free())
                try:
                    source.rename(final)
                    return final
                except OSError:
                    if not final.exists() and not final.is_symlink():
                        raise
            raise RunError(f"could not claim a new version number in {self.path}")
        finally:
            if source is not staged:
                fs.rmtree(source)  # gone after a successful rename

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A hidden local folder for a version being written and verified; removed on any error. It
        sits inside the model folder (so publishing is a rename), or in the local cache for a URL."""
        self.path.mkdir(parents=True, exist_ok=True)
        sweep_partials(self.path)
        if isinstance(self.path, GPath):
            tmp = partial_path(fs.mkdirs(fs.cache_dir("staging", self.path)) / "version")
        else:
            tmp = partial_path(self.path / "version")
        tmp.mkdir()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # after publish() it is gone already


class PublishedDir:
    """A published backbone: a reusable SavedModel (the TF-Hub format) with its model card and a
    checksum manifest. It is written whole or not at all, and checked against the manifest before use."""

    SAVED_MODEL = "saved_model.pb"
    CARD = "tf_transfer_card.json"
    README = "README.md"
    MANIFEST = "SHA256SUMS"
    # a published text encoder is two such folders side by side (TF-Hub's BERT encoder and preprocessor)
    ENCODER = "encoder"
    PREPROCESSOR = "preprocess"

    def __init__(self, path: str | Path | GPath):
        self.path = fs.path(path)

    def is_published(self) -> bool:
        """Whether the folder claims to be a tf_transfer publication (it has a card or a manifest)."""
        return (self.path / self.CARD).is_file() or (self.path / self.MANIFEST).is_file()

    def card(self) -> dict:
        return read_json(self.path / self.CARD, {}) or {}

    def write_manifest(self) -> int:
        """SHA256SUMS over every file (sha256sum's format); returns how many files it lists."""
        files = [f for f in fs.files_under(self.path) if f.name != self.MANIFEST]
        lines = [f"{file_digest(f)}  {f.relative_to(self.path).as_posix()}\n" for f in files]
        write_text(self.path / self.MANIFEST, "".join(lines))
        return len(lines)

    def check(self) -> None:
        """RunError naming the first missing or altered file (or the missing manifest)."""
        manifest = self.path / self.MANIFEST
        if not manifest.is_file():
            raise RunError(f"{self.path} is not a complete published backbone: no {self.MANIFEST}; publish it again")
        for line in manifest.read_text(encoding="utf-8").splitlines():
            digest, _, rel = line.partition("  ")
            file = self.path / rel
            if not file.is_file():
                raise RunError(f"{self.path} is incomplete: {rel} is missing (listed in {self.MANIFEST})")
            if file_digest(file) != digest:
                raise RunError(f"{self.path}: {rel} does not match its checksum in {self.MANIFEST} "
                               "(altered or cut short); publish it again")


def resolve_export(path: str | Path | GPath) -> Path | GPath:
    """A version folder as given, or the latest complete version of a model folder."""
    path = fs.path(path)
    if (path / ModelDir.SAVED_MODEL).is_file():
        return path
    return ModelDir(path).latest()
