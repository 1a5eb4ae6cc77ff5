"""tf.distribute: strategy choice, mirrored and multi-worker training, mixed precision, pre-emption."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tf_transfer.folders import RunDir
from tf_transfer.serving import savedmodel
from tf_transfer.training import distribute

from .conftest import SIZE, history_lines, interrupt_when, only_run_dir, run_on_two_cpus

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_auto_choice_follows_the_environment(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert distribute.choose("auto") == "default"
    assert distribute.choose("auto", tpu="grpc://10.0.0.2:8470") == "tpu"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert distribute.choose("auto") == "multiworker"
    assert not distribute.task_is_chief({"type": "worker", "index": 1}, {"worker": ["a", "b"]})
    assert distribute.task_is_chief({"type": "worker", "index": 0}, {"worker": ["a", "b"]})
    assert not distribute.task_is_chief({"type": "worker", "index": 0}, {"chief": ["c"], "worker": ["a"]})
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.DistributeError, match="TF_CONFIG is not valid JSON"):
        distribute.choose("auto")
    with pytest.raises(distribute.DistributeError, match="--strategy 'gpu'"):
        distribute.choose("gpu")


def test_precision_and_tpu_paths(tmp_path):
    assert distribute.precision_policy("auto", "default") == "float32"  # CPU: no gain
    assert distribute.precision_policy("auto", "tpu") == "mixed_bfloat16"
    assert distribute.precision_policy("mixed_float16", "default") == "mixed_float16"
    with pytest.raises(distribute.DistributeError, match="--precision"):
        distribute.precision_policy("half", "default")
    with pytest.raises(distribute.DistributeError, match="gs://"):
        distribute.check_tpu_paths("tpu", "grpc://10.0.0.2:8470", {"--data": str(tmp_path)})
    distribute.check_tpu_paths("tpu", "grpc://10.0.0.2:8470", {"--data": "gs://bucket/flowers"})
    distribute.check_tpu_paths("tpu", "local", {"--data": str(tmp_path)})  # a TPU VM reads its own disk
    distribute.check_tpu_paths("default", "", {"--data": str(tmp_path)})
    topo = distribute.topology(tf.distribute.get_strategy())
    assert (topo.kind, topo.replicas, topo.workers, topo.is_chief) == ("default", 1, 1, True)


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_mixed_float16_keeps_a_float32_head_and_a_float32_export(tmp_path):
    from tf_transfer._keras import keras
    from tf_transfer.config import ModelConfig
    from tf_transfer.models import backbones
    from tf_transfer.models import classifier as model_lib

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = model_lib.build_classifier(backbones.build("mobilenet_v2_0.35", "none", SIZE), 3, ModelConfig())
        assert model.get_layer("backbone").compute_dtype == "float16"
        assert model.get_layer("head").layers[-1].compute_dtype == "float32" and model.output.dtype == tf.float32
        spec = savedmodel.ExportSpec(["a", "b", "c"], SIZE, {}, {}, keras_traces=False)
        path = savedmodel.export_classifier(model, spec, tmp_path, "m")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    fn = tf.saved_model.load(str(path)).signatures["serving_pixels"]
    assert fn.structured_input_signature[1]["pixels"].dtype == tf.float32
    out = fn(pixels=tf.zeros([2, 40, 40, 3]))
    assert out["scores"].dtype == tf.float32 and out["scores"].shape == (2, 3)


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tf_transfer import config as config_lib
    from tf_transfer.workflows import recipe
    base = config_lib.Config().replace(**{
        "runs_dir": sys.argv[2], "data.source": sys.argv[1], "data.image_size": 64, "data.augment": False,
        "model.dropout": 0.0, "phase1.epochs": 2, "phase2.epochs": 1, "phase1.patience": 0,
        "phase2.patience": 0, "export.enabled": False, "evaluation.report": False, "phase2.unfreeze": "10"})
    out = {}
    for name, strategy, batch in (("default", "default", 16), ("mirrored", "mirrored", 8)):
        r = recipe.run(base.replace(**{"name": name, "runtime.strategy": strategy, "data.batch_size": batch}))
        head = r.model.get_layer("head").get_layer("probabilities").kernel.numpy()
        out[name] = {"val_loss": r.metrics["val"]["loss"], "head": head.tolist(),
                     "replicas": r.model.distribute_strategy.num_replicas_in_sync}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_the_default_strategy(shapes_dir, tmp_path):
    out = run_on_two_cpus(MIRRORED, shapes_dir, tmp_path / "runs", timeout=600)
    assert out["mirrored"]["replicas"] == 2 and out["default"]["replicas"] == 1
    assert out["mirrored"]["val_loss"] == pytest.approx(out["default"]["val_loss"], abs=2e-3)
    np.testing.assert_allclose(out["mirrored"]["head"], out["default"]["head"], atol=2e-3)


def _arrays(path):
    with np.load(path) as saved:
        return {str(n): saved[f"w{i}"] for i, n in enumerate(saved["names"])}


@pytest.mark.slow
def test_two_worker_processes_train_together_and_only_the_chief_exports(shapes_dir, tmp_path):
    args = ["--data", str(shapes_dir), "--name", "mw", "--runs-dir", str(tmp_path / "runs"), "--export-dir",
            str(tmp_path / "saved_models"), "--image-size", "48", "--batch-size", "8", "--phase1-epochs", "1",
            "--phase2-epochs", "1", "--no-report", "--no-verify-export"]
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.launch", "--workers", "2", "--timeout", "400",
                           "--", *args], capture_output=True, text=True, env=ENV, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Strategy: multiworker, 2 replica(s) on 2 worker(s); global batch 16" in proc.stdout
    assert "Input sharding: by file" in proc.stdout
    (run_dir,) = (tmp_path / "runs" / "mw").iterdir()
    chief = _arrays(RunDir(run_dir).weights_file("final"))
    worker = _arrays(RunDir(run_dir, chief=False, worker=1).weights_file("final"))
    assert chief.keys() == worker.keys()
    assert all(np.array_equal(chief[k], worker[k]) for k in chief)  # identical weights on both workers
    assert sorted(p.name for p in (tmp_path / "saved_models" / "mw").iterdir()) == ["1"]  # one export
    assert RunDir(run_dir, chief=False, worker=1).log_file.is_file() and RunDir(run_dir).metrics_file.is_file()


@pytest.mark.slow  # a minute: in the slow suite since the default one passed ten minutes
def test_sigterm_saves_a_checkpoint_and_resume_continues(shapes_dir, tmp_path):
    args = [sys.executable, "-m", "tf_transfer.train", "--data", str(shapes_dir), "--name", "pre",
            "--runs-dir", str(tmp_path / "runs"), "--image-size", "32", "--batch-size", "8",
            "--phase1-epochs", "1", "--phase2-epochs", "30", "--phase1-patience", "0", "--phase2-patience", "0",
            "--no-export", "--no-report"]
    runs = tmp_path / "runs" / "pre"
    code, out = interrupt_when(args, lambda: sum(e["phase"] == 2 for e in history_lines(only_run_dir(runs))) >= 2,
                               tmp_path / "pre.log", sig=signal.SIGTERM)
    run_dir = only_run_dir(runs)
    assert code == 143, out[-3000:]
    assert "Pre-empted. SIGTERM: saved the training state" in out
    last = history_lines(run_dir)[-1]["epoch"]
    backup = RunDir(run_dir).backup_dir("phase2")
    assert any(backup.rglob("*.index"))
    # A kill in the middle of the next checkpoint write leaves partial files behind: they must not matter.
    checkpoint_dir = next(p.parent for p in backup.rglob("checkpoint"))
    (checkpoint_dir / "ckpt-999.index").write_bytes(b"\x00partial")
    (checkpoint_dir / "ckpt-999.data-00000-of-00001").write_bytes(b"\x00" * 10)
    resumed = subprocess.run([sys.executable, "-m", "tf_transfer.train", "--resume", str(run_dir)],
                             capture_output=True, text=True, env=ENV, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    history = RunDir(run_dir).history()["epochs"]
    assert [e["epoch"] for e in history] == list(range(1, 32))
    new = history_lines(run_dir)[len(history_lines(run_dir)) - (31 - last):]
    assert new[0]["epoch"] == last + 1 and all(e["phase"] == 2 for e in new)
