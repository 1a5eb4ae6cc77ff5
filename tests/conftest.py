"""Shared fixtures: generated image folders, small configs, one trained run reused across tests.

The session fixtures that cost something (generated data, tiny checkpoints, trained runs) are built once
into a store: $TF_TRANSFER_TEST_STORE when set (.ci/run sets it, so the slow suite reuses what the default
suite built), else a folder shared by the pytest-xdist workers of one session, else a temporary folder.
A store's entries are keyed by the source of tf_transfer/ and of this file, so a change rebuilds them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
CIFAR = SHARED / "datasets" / "cifar10_small"
SIZE = 64  # small inputs keep the suite fast on 2 CPU cores

needs_shared = pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/datasets/cifar10_small is not present")


# --- the default suite's time budget (pyproject.toml: default_suite_budget_seconds) ------------------------

def pytest_addoption(parser):
    parser.addini("default_suite_budget_seconds", "the default suite fails when it takes longer (wall time, as "
                  "pytest reports it); 0 turns the check off", default="0")


def pytest_sessionstart(session):
    session.config._tf_transfer_started = time.monotonic()


def _is_default_suite(config) -> bool:
    """The README's test command: the default marker selection over the testpaths, on the main process."""
    return (config.option.markexpr == "not slow" and config.args_source == pytest.Config.ArgsSource.TESTPATHS
            and not os.environ.get("PYTEST_XDIST_WORKER") and not config.option.keyword)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    budget = float(session.config.getini("default_suite_budget_seconds") or 0)
    seconds = time.monotonic() - getattr(session.config, "_tf_transfer_started", time.monotonic())
    if budget and _is_default_suite(session.config) and seconds > budget:
        session.config._tf_transfer_over_budget = (
            f"the default suite took {seconds:.0f} s, over its budget of {budget:.0f} s "
            "(pyproject.toml: default_suite_budget_seconds): make the new tests cheaper, share a trained fixture, "
            "or mark them slow")
        if exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    message = getattr(config, "_tf_transfer_over_budget", None)
    if message:
        terminalreporter.write_line(f"FAILED (time budget): {message}", red=True, bold=True)


# With pytest-xdist (pyproject.toml: -n 2), tests are handed to the workers in collection order. That order
# is: the first test of each trained run (the one with the fewest fixtures, so that no module fixture is built
# for it alone), then every test that needs no trained run, then the others. The workers start by building
# the runs into the store while the other worker carries on, and no test waits for a run being built.
TRAINED_RUNS = ("trained_run", "multitask_run", "text_run")


def _runs_of(item) -> set[str]:
    return set(TRAINED_RUNS) & set(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config, items):
    builders = []
    for name in TRAINED_RUNS:
        users = [item for item in items if name in _runs_of(item)]
        if users:
            builders.append(min(users, key=lambda item: len(item.fixturenames)))
    builders = list({id(b): b for b in builders}.values())
    rest = [item for item in items if all(item is not b for b in builders)]
    items[:] = [*builders, *(i for i in rest if not _runs_of(i)), *(i for i in rest if _runs_of(i))]


@pytest.fixture(autouse=True)
def _logs_reach_caplog():
    """Commands run in-process (and runs, through their log file) set tf_transfer's logger not to propagate;
    the tests that read caplog must not depend on which tests ran before them in this worker."""
    import logging

    logging.getLogger("tf_transfer").propagate = True


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated datasets go to a temporary cache, not the user's home."""
    os.environ["TF_TRANSFER_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@functools.lru_cache(maxsize=1)
def _store_key() -> str:
    digest = hashlib.sha256()
    for path in [*sorted((ROOT / "tf_transfer").rglob("*.py")), Path(__file__)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _store(tmp_path_factory) -> Path | None:
    if os.environ.get("TF_TRANSFER_TEST_STORE"):
        return Path(os.environ["TF_TRANSFER_TEST_STORE"]) / _store_key()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers of one session share their base folder's parent
        return tmp_path_factory.getbasetemp().parent / "shared-fixtures"
    return None


def shared(tmp_path_factory, name: str, build: Callable[[Path], object], load: Callable[[Path], object] = Path):
    """A session fixture's value, built once: `build(folder)` writes into an empty folder and returns the
    value; later sessions and other workers get `load(folder)` (default: the folder itself) instead."""
    store = _store(tmp_path_factory)
    if store is None:
        return build(tmp_path_factory.mktemp(name))
    folder, done = store / name, store / f"{name}.complete"
    store.mkdir(parents=True, exist_ok=True)
    with (store / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait, then load
        if done.exists():
            return load(folder)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        value = build(folder)
        done.touch()
        return value


def shared_run(tmp_path_factory, name: str, config_for: Callable[[Path], object], with_model: bool = False):
    """A trained run as a shared fixture: its RunResult, pickled without the model; `with_model` rebuilds
    the model from the run's final weights when it is loaded."""
    def build(folder: Path):
        from tf_transfer.workflows import recipe

        result = recipe.run(config_for(folder))
        (folder / "result.pickle").write_bytes(pickle.dumps(dataclasses.replace(result, model=None)))
        return result

    def load(folder: Path):
        result = pickle.loads((folder / "result.pickle").read_bytes())
        if with_model:
            from tf_transfer.data import datasets
            from tf_transfer.folders import RunDir
            from tf_transfer.workflows.recipe import modality_for, with_modality_defaults

            modality, run = modality_for(with_modality_defaults(result.config)), RunDir(result.run_dir)
            result.model = modality.rebuild(modality.heads(datasets.load_split(run)), run.weights_file("final"))
        return result

    return shared(tmp_path_factory, name, build, load)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    from tf_transfer.data import demo

    return shared(tmp_path_factory, "shapes", lambda root: demo.write_shapes(root, per_class=30, size=SIZE, seed=1))


def make_config(tmp_path: Path, source: str, **overrides):
    """A small, fast config writing runs and exports under tmp_path; overrides use dotted keys."""
    from tf_transfer import config as config_lib

    base = {
        "runs_dir": str(tmp_path / "runs"),
        "data.source": source,
        "data.image_size": SIZE,
        "data.batch_size": 16,
        "export.export_dir": str(tmp_path / "saved_models"),
        "export.verify": False,
        "phase1.epochs": 2,
        "phase2.epochs": 1,
        "phase1.patience": 0,
        "phase2.patience": 0,
    }
    base.update(overrides)
    return config_lib.apply_overrides(config_lib.Config(), base)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shapes_dir):
    """One end-to-end run (both phases, export and fresh-process verification) shared by several tests."""
    return shared_run(tmp_path_factory, "e2e", lambda tmp: make_config(tmp, str(shapes_dir), name="shapes", **{
        "phase1.epochs": 6, "phase2.epochs": 3, "export.verify": True, "phase2.unfreeze": "20",
        "evaluation.baseline": "scratch",
        # the recipe before the fine-tuning defaults changed: phase 2 reliably improves on these shapes
        "phase2.learning_rate": 1e-4, "phase2.schedule": "constant", "monitor": "val_loss",
    }), with_model=True)


@pytest.fixture(scope="session")
def manifest(tmp_path_factory) -> Path:
    """A CSV manifest of generated images with three tasks (shape, colour with empty cells, multi-label tags)."""
    from tf_transfer.data import demo

    return shared(tmp_path_factory, "multitask", lambda root: demo.write_multitask(root, count=150, size=SIZE, seed=3),
                  lambda root: root / "manifest.csv")


@pytest.fixture(scope="session")
def multitask_run(manifest, tmp_path_factory):
    """One run with three heads (feature cache on, a task weight, TFLite asked for), shared by several tests."""
    return shared_run(tmp_path_factory, "mt_run", lambda tmp: make_config(tmp, f"csv:{manifest}", name="multi", **{
        "phase1.epochs": 5, "phase2.epochs": 1, "export.verify": True, "phase1.feature_cache": "on",
        "model.task_weights": "colour=0.5", "export.tflite": "float"}))


TINY_BERT = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position": 64,
             "dropout": 0.0, "attention_dropout": 0.0}


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> Path:
    """Generated texts of three classes: reviews.csv (text,label) and folder/{train,test}/<class>/*.txt."""
    from tf_transfer.data import demo

    return shared(tmp_path_factory, "texts", lambda root: demo.write_texts(root, per_class=60, seed=2))


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint in the Hugging Face layout (random weights) over the generated texts' words, with
    sentence-transformers' mean pooling (a random encoder's pooled output hardly depends on the text)."""
    def build(root: Path) -> Path:
        from tf_transfer._keras import keras
        from tf_transfer.data import demo
        from tf_transfer.models import text, text_backbones

        keras.utils.set_random_seed(0)
        vocab = demo.text_vocab()
        cfg = text.BertConfig(len(vocab), **TINY_BERT)
        return text_backbones.save_hf(text.bert_encoder(cfg), cfg, vocab, root, mean_pooling=True)

    return shared(tmp_path_factory, "tiny_hf", build)


@pytest.fixture(scope="session")
def tiny_hub_text(tmp_path_factory, tiny_hf) -> tuple[Path, Path]:
    """The tiny encoder and its preprocessing model as TF-Hub BERT SavedModels: (encoder, preprocessor)."""
    def build(root: Path) -> Path:
        import tensorflow as tf

        from tf_transfer._keras import keras
        from tf_transfer.models import text_backbones

        bb = text_backbones.build(f"hf:{tiny_hf}", "pretrained", "", 32, "pooled")
        bb.layer.save(str(root / "encoder"), save_format="tf")
        strings = keras.Input((), dtype=tf.string, name="text")
        keras.Model(strings, bb.preprocess(strings), name="preprocess").save(str(root / "preprocess"),
                                                                             save_format="tf")
        return root

    root = shared(tmp_path_factory, "tiny_hub_text", build)
    return root / "encoder", root / "preprocess"


@pytest.fixture(scope="session")
def text_run(text_data, tiny_hf, tmp_path_factory):
    """A text classifier on the generated reviews with the tiny checkpoint (both phases, export verified)."""
    return shared_run(tmp_path_factory, "text_run", lambda tmp: make_config(
        tmp, f"csv:{text_data / 'reviews.csv'}", name="reviews", **{
            "model.backbone": f"hf:{tiny_hf}", "model.max_seq_length": 24, "phase1.epochs": 30, "phase2.epochs": 3,
            "phase1.learning_rate": 1e-2, "phase2.learning_rate": 2e-3, "export.verify": True,
            "phase1.feature_cache": "on", "evaluation.baseline": "tfidf"}))


def save_tiny_backbone(path: Path, seed: int = 0) -> Path:
    """A tiny conv feature extractor ([0, 1] pixels in, pooled features out) saved as a SavedModel:
    a real local TF-Hub handle."""
    from tf_transfer._keras import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    keras.Model(inputs, x, name="tiny").save(str(path), save_format="tf")
    return path


@pytest.fixture(scope="session")
def hub_handle(tmp_path_factory) -> Path:
    return shared(tmp_path_factory, "hub", lambda root: save_tiny_backbone(root / "tiny_features"),
                  lambda root: root / "tiny_features")


def history_lines(run_dir: Path | None) -> list[dict]:
    """The per-epoch lines a run has logged so far, in order, repeats included (epochs.jsonl)."""
    from tf_transfer.folders import RunDir

    path = run_dir / RunDir.HISTORY_LOG if run_dir else None
    return [json.loads(line) for line in path.read_text().splitlines()] if path and path.exists() else []


def only_run_dir(runs: Path) -> Path | None:
    """The single run folder under runs/<name>, once it exists."""
    found = sorted(runs.glob("*")) if runs.is_dir() else []
    return found[0] if found else None


def interrupt_when(args: list[str], ready: Callable[[], bool], log: Path, sig: int = signal.SIGKILL,
                   timeout: float = 240) -> tuple[int, str]:
    """Start a command, send it `sig` as soon as ready() holds; returns its exit code and output.

    Output goes to `log` rather than a pipe, so a chatty process never blocks on a full pipe.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None and not ready():
                time.sleep(0.05)
            assert proc.poll() is None, f"the process ended before it could be interrupted:\n{log.read_text()[-3000:]}"
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, log.read_text()


TWO_CPUS = """import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_on_two_cpus(script: str, *args: str, timeout: float = 900) -> dict:
    """Run a Python script in a fresh process whose CPU is split into two logical devices (a strategy with
    two replicas on one machine); returns the JSON object the script prints last."""
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", TWO_CPUS + script, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
