"""Every option does what it says: label smoothing, L2, class weights, mixed-precision training, XLA,
the TFLite variants, re-exporting a run, predicting through a server, TF-Hub URL handles, and the
scratch baseline under a non-default strategy."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf

from tf_transfer._keras import keras
from tf_transfer.config import Config, ModelConfig
from tf_transfer.data import datasets, demo, images
from tf_transfer.errors import BackboneError
from tf_transfer.folders import ModelDir, RunDir
from tf_transfer.models import backbones, classifier
from tf_transfer.serving import tflite
from tf_transfer.training import phases

from .conftest import SIZE, make_config, run_on_two_cpus

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _tiny_model(model_cfg: ModelConfig, classes: int = 3):
    bb = backbones.build("mobilenet_v2_0.35", "none", 32)
    return classifier.build_classifier(bb, classes, model_cfg)


def test_label_smoothing_reaches_the_loss():
    for smoothing in (0.0, 0.3):
        config = Config().replace(**{"model.label_smoothing": smoothing})
        model = _tiny_model(config.model)
        phases.compile_for(model, phases.stages(config)[0], config)
        y = tf.constant(np.eye(3, dtype=np.float32)[[0]])
        # a confident, correct prediction: no loss without smoothing, a clear one with it
        loss = float(model.loss(y, tf.constant([[1 - 2e-7, 1e-7, 1e-7]])))
        assert (loss < 1e-4) if smoothing == 0 else (loss > 0.5)


def test_l2_adds_a_penalty_on_the_head_kernels():
    plain, decayed = _tiny_model(ModelConfig(l2=0.0)), _tiny_model(ModelConfig(l2=0.01))
    assert not plain.losses
    kernel = decayed.get_layer("head").get_layer("probabilities").kernel
    (penalty,) = decayed.losses
    assert float(penalty) == pytest.approx(0.01 * float(tf.reduce_sum(kernel**2)), rel=1e-5)


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_class_weights_change_what_the_head_learns(tmp_path):
    from tf_transfer.workflows import recipe

    root = demo.write_shapes(tmp_path / "imbalanced", classes=("circle", "square"),
                             per_class={"circle": 40, "square": 8}, size=32, seed=4)
    heads = {}
    for weighted in (False, True):
        config = make_config(tmp_path / str(weighted), str(root), **{
            "data.image_size": 32, "data.class_weights": weighted, "data.augment": False, "model.dropout": 0.0,
            "phase1.epochs": 3, "phase2.epochs": 0, "export.enabled": False, "evaluation.report": False})
        result = recipe.run(config)
        heads[weighted] = result.model.get_layer("head").get_layer("probabilities").bias.numpy()
    data = datasets.prepare(config.data, config.seed)
    weights = data.class_weights()
    assert weights[1] > 2 * weights[0]  # the rare class counts more
    # the weighted head leans less towards the frequent class
    assert heads[True][0] - heads[True][1] < heads[False][0] - heads[False][1]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{"runtime.precision": "mixed_float16"}, {"runtime.jit_compile": True}],
                         ids=["mixed_float16", "xla"])
def test_mixed_precision_and_xla_train_and_export(shapes_dir, tmp_path, overrides):
    from tf_transfer.workflows import recipe

    mixed = "runtime.precision" in overrides  # only float16 needs the fresh-process check's own tolerance
    config = make_config(tmp_path, str(shapes_dir), **{"data.image_size": 32, "phase1.epochs": 2,
                                                        "phase2.epochs": 1, "export.verify": mixed,
                                                        "evaluation.report": False, **overrides})
    result = recipe.run(config)
    losses = [e["loss"] for e in result.history]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert result.export_path is not None  # mixed: verified in a fresh process with float16 tolerance
    log = RunDir(result.run_dir).log_file.read_text()
    assert ("precision mixed_float16" in log) if mixed else ("; XLA" in log)


@pytest.mark.slow
def test_dynamic_float16_and_int8_tflite_agree_with_the_model(trained_run, tmp_path):
    data = datasets.load_split(RunDir(trained_run.run_dir))
    files = [e.key for e in data.splits["test"]]
    pixels = np.stack([images.decode_and_resize(tf.io.read_file(f), SIZE).numpy() for f in files])
    expected = trained_run.model(tf.cast(pixels, tf.float32), training=False).numpy().argmax(-1)
    train = [images.decode_and_resize(tf.io.read_file(e.key), SIZE).numpy() for e in data.splits["train"][:16]]
    for variant in ("dynamic", "float16", "int8"):  # int8: calibrated on training images, as the export does
        path = tflite.convert(trained_run.model, SIZE, variant, tmp_path, representative=train)
        agreement = np.mean(tflite.predict(path, pixels).argmax(-1) == expected)
        assert agreement >= 0.9, (variant, agreement)


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_export_run_writes_a_new_verified_version(trained_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run.path, ignore=shutil.ignore_patterns("tensorboard", "baseline_scratch"))
    config = json.loads(run.config_file.read_text())
    config["export"]["export_dir"] = str(tmp_path / "exports")  # not the shared fixture's export folder
    run.config_file.write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "tf_transfer.export", "--run", str(run.path), "--tflite", "float"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ModelDir(tmp_path / "exports" / "shapes").versions() == [1] and "tensorflow_model_server" in out.stdout
    assert run.export_path() == tmp_path / "exports" / "shapes" / "1"
    assert (run.export_path() / ModelDir.TFLITE / "model.tflite").is_file()
    assert (run.export_path() / ModelDir.TFLITE_LABELS).read_text().splitlines() == trained_run.class_names


@pytest.mark.slow
def test_predict_through_rest_and_grpc_servers(trained_run, tmp_path):
    from tf_transfer.serving.server import LocalServer

    data = datasets.load_split(RunDir(trained_run.run_dir))
    files = [e.key for e in data.splits["test"][:3]]
    server = LocalServer([trained_run.export_path.parent], port=0, grpc_port=0, poll_seconds=0).start()
    try:
        for url in (f"http://127.0.0.1:{server.port}", f"grpc://127.0.0.1:{server.grpc_port}"):
            out = subprocess.run([sys.executable, "-m", "tf_transfer.predict", "--server", url, "--model", "shapes",
                                  *files, "--top-k", "1"], capture_output=True, text=True, env=ENV, timeout=300)
            assert out.returncode == 0, out.stderr[-2000:]
            lines = out.stdout.strip().splitlines()
            assert len(lines) == 3 and all(line.split(": ")[1].split()[0] in trained_run.class_names for line in lines)
    finally:
        server.stop()
    out = subprocess.run([sys.executable, "-m", "tf_transfer.predict", "--server", "http://127.0.0.1:9",
                          "--model", "shapes", files[0], "--timeout", "2"], capture_output=True, text=True, env=ENV)
    assert out.returncode == 2 and "is the model server running" in out.stderr


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves a SavedModel as TF-Hub does: GET <handle>?tf-hub-format=compressed -> .tar.gz."""

    archive = b""

    def do_GET(self):
        if self.path == "/models/tiny/1?tf-hub-format=compressed":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.archive)))
            self.end_headers()
            self.wfile.write(self.archive)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_hub_url_handle_is_downloaded_and_cached(hub_handle, tmp_path, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(hub_handle, arcname=".")
    _HubHandler.archive = buf.getvalue()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/models/tiny/1"
        bb = backbones.build(f"hub:{url}", "", SIZE)
        model = classifier.build_classifier(bb, 3, ModelConfig())
        assert model(np.zeros((1, SIZE, SIZE, 3), np.float32)).shape == (1, 3)
        assert any((tmp_path / "hub_cache").rglob("saved_model.pb")), "the download was not cached"
        with pytest.raises(BackboneError, match="could not be loaded"):
            backbones.build(f"hub:http://127.0.0.1:{server.server_address[1]}/models/missing/1", "", SIZE)
    finally:
        server.shutdown()


BASELINE_MIRRORED = """
import json, sys
from tf_transfer import config as config_lib
from tf_transfer.workflows import recipe
config = config_lib.Config().replace(**{
    "runs_dir": sys.argv[2], "data.source": sys.argv[1], "data.image_size": 32, "data.batch_size": 8,
    "phase1.epochs": 1, "phase2.epochs": 1, "phase1.patience": 0, "phase2.patience": 0, "export.enabled": False,
    "evaluation.report": False, "evaluation.baseline": "scratch", "runtime.strategy": "mirrored"})
result = recipe.run(config)
print(json.dumps({"baseline": result.metrics["baseline_scratch"]["test"]["accuracy"],
                  "replicas": result.model.distribute_strategy.num_replicas_in_sync}))
"""


@pytest.mark.slow
def test_the_scratch_baseline_runs_in_the_runs_own_strategy(shapes_dir, tmp_path):
    result = run_on_two_cpus(BASELINE_MIRRORED, shapes_dir, tmp_path / "runs")
    assert result["replicas"] == 2 and result["baseline"] is not None
    (run,) = (tmp_path / "runs" / "classifier").iterdir()
    assert "Strategy: mirrored, 2 replica(s)" in RunDir(run).baseline().log_file.read_text()
    assert keras.mixed_precision.global_policy().name == "float32"
