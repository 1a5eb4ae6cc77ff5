"""Two-phase training: what each phase trains, hub backbones, and resuming a killed run."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tf_transfer._keras import keras
from tf_transfer.config import ModelConfig
from tf_transfer.folders import RunDir
from tf_transfer.models import backbones
from tf_transfer.models import classifier as model_lib
from tf_transfer.workflows import recipe

from .conftest import SIZE, history_lines, interrupt_when, make_config, only_run_dir


def _by_name(layer):
    return {w.name: w.numpy() for w in layer.weights}


def _classifier(train_bn=False):
    bb = backbones.build("mobilenet_v2_0.35", "imagenet", SIZE)
    return model_lib.build_classifier(bb, 3, ModelConfig(), train_bn=train_bn)


def test_phase1_leaves_backbone_bit_identical_phase2_only_unfrozen(trained_run):
    reference = _by_name(backbones.build("mobilenet_v2_0.35", "imagenet", SIZE).layer)
    phase1 = _classifier()
    RunDir(trained_run.run_dir).load_weights(phase1, "phase1_final")
    after1 = _by_name(phase1.get_layer("backbone"))
    assert after1.keys() == reference.keys()
    assert all(np.array_equal(after1[k], reference[k]) for k in reference)

    final = trained_run.model.get_layer("backbone")
    probe = _classifier()
    unfrozen = set(model_lib.unfreeze_top(probe, "20"))
    assert unfrozen and not any("BN" in n or "bn" in n for n in unfrozen)
    for layer in final.layers:
        for w in layer.weights:
            before, after = after1[w.name], w.numpy()
            if "moving_" in w.name or layer.name not in unfrozen:
                assert np.array_equal(before, after), f"{w.name} changed but was frozen"
            else:
                assert not np.array_equal(before, after), f"{w.name} was unfrozen but did not train"


def test_trainable_counts_per_phase():
    m = _classifier()
    head_params = 1280 * 3 + 3
    model_lib.freeze_backbone(m)
    assert model_lib.count_params(m.trainable_weights) == head_params
    layers = [la for la in m.get_layer("backbone").layers if not isinstance(la, keras.layers.InputLayer)]

    names = model_lib.unfreeze_top(m, "20")
    top = layers[-20:]
    expected = [la for la in top if la.weights and not isinstance(la, keras.layers.BatchNormalization)]
    assert names == [la.name for la in expected]
    assert model_lib.count_params(m.trainable_weights) == head_params + sum(
        model_lib.count_params(la.trainable_weights) for la in expected)

    names = model_lib.unfreeze_top(m, "block_16")
    assert names[0].startswith("block_16") and all(not n.startswith("block_15") for n in names)
    with_bn = model_lib.unfreeze_top(m, "block_16", train_bn=True)
    assert len(with_bn) > len(names) and any("BN" in n for n in with_bn)
    assert model_lib.unfreeze_top(m, "0") == []
    assert model_lib.count_params(m.trainable_weights) == head_params
    all_names = model_lib.unfreeze_top(m, "all")
    assert "Conv1" in all_names
    with pytest.raises(backbones.BackboneError, match="no backbone layer is named or starts with 'block_99'"):
        model_lib.unfreeze_top(m, "block_99")


def _layers_with_gradient_ops(model) -> set[str]:
    """Backbone layers that have ops in the backward pass of the model's compiled training step."""
    import tensorflow as tf

    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    ds = tf.data.Dataset.from_tensors((np.zeros((2, SIZE, SIZE, 3), np.float32), np.eye(3, dtype=np.float32)[:2]))
    graph = model.make_train_function().get_concrete_function(iter(ds)).graph
    return {op.name.split("/backbone/")[1].split("/")[0] for op in graph.get_operations()
            if op.name.startswith("gradient_tape/") and "/backbone/" in op.name}


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_backward_pass_stops_at_the_lowest_unfrozen_layer():
    model = _classifier()
    layers = [la.name for la in model_lib.backbone_of(model).layers]
    model_lib.freeze_backbone(model)
    assert _layers_with_gradient_ops(model) == set(), "phase 1: no gradient work inside the frozen backbone"
    unfrozen = model_lib.unfreeze_top(model, "20")
    lowest = layers.index(unfrozen[0])
    with_grads = _layers_with_gradient_ops(model)
    assert unfrozen[0] in with_grads
    assert with_grads <= set(layers[lowest:]), f"gradient ops below {unfrozen[0]}: {with_grads - set(layers[lowest:])}"
    model_lib.unfreeze_top(model, "all")
    assert "Conv1" in _layers_with_gradient_ops(model)


def test_model_layers_are_named_and_output_probabilities():
    m = _classifier()
    assert [la.name for la in m.layers] == ["image", "preprocess", "backbone", "pooler", "head"]
    assert m.get_layer("head").layers[-1].name == "probabilities"
    p = m(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")).numpy()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_hub_handle_backbone_is_fine_tuned_in_phase2(hub_handle, shapes_dir, tmp_path):
    # No phase 1 epochs: a skipped phase 1 is no baseline, so phase 2 is kept whatever its score
    config = make_config(tmp_path, str(shapes_dir), name="hub", **{
        "model.backbone": f"hub:{hub_handle}", "phase1.epochs": 0, "phase2.epochs": 2, "phase2.unfreeze": "all",
        "phase2.learning_rate": 0.01})
    result = recipe.run(config)
    original = keras.models.load_model(str(hub_handle))
    start = {w.name.split("/")[-2] + "/" + w.name.split("/")[-1]: w.numpy() for w in original.weights}

    def hub_weights(model):
        return {w.name.split("/")[-2] + "/" + w.name.split("/")[-1]: w.numpy()
                for w in model.get_layer("backbone").weights}

    def saved(weights):
        model = model_lib.build_classifier(backbones.build(f"hub:{hub_handle}", "", SIZE), 3, ModelConfig())
        RunDir(result.run_dir).load_weights(model, weights)
        return hub_weights(model)

    assert all(np.array_equal(v, start[k]) for k, v in saved("phase1_final").items())
    assert not np.array_equal(saved("final")["conv1/kernel:0"], start["conv1/kernel:0"])
    assert result.export_path is not None and (result.export_path / "saved_model.pb").is_file()


@pytest.mark.slow
def test_run_killed_in_phase2_resumes_in_phase2(shapes_dir, tmp_path):
    args = [sys.executable, "-m", "tf_transfer.train", "--data", str(shapes_dir), "--name", "killme",
            "--runs-dir", str(tmp_path / "runs"), "--export-dir", str(tmp_path / "saved_models"),
            "--image-size", "32", "--phase1-epochs", "2", "--phase2-epochs", "25", "--phase1-patience", "0",
            "--phase2-patience", "0", "--no-verify-export", "--batch-size", "16", "--no-augment"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    runs = tmp_path / "runs" / "killme"
    interrupt_when(args, lambda: sum(e["phase"] == 2 for e in history_lines(only_run_dir(runs))) >= 2,
                   tmp_path / "killed.log")
    run_dir = only_run_dir(runs)
    state = RunDir(run_dir).state()
    assert state["done"]["phase1"]["epoch"] == 2 and state["phase"] == 2 and "phase2" not in state["done"]
    lines_before = len(history_lines(run_dir))

    out = subprocess.run([sys.executable, "-m", "tf_transfer.train", "--resume", str(run_dir)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Phase 1 (backbone frozen) finished earlier (2 epochs)" in out.stdout
    new = history_lines(run_dir)[lines_before:]
    assert new and all(e["phase"] == 2 for e in new)  # phase 1 did not run again
    assert new[0]["epoch"] == state["last_epoch"] + 1  # continues after the last checkpoint
    history = RunDir(run_dir).history()
    assert [e["epoch"] for e in history["epochs"]] == list(range(1, 28))
    assert history["phase_boundary"] == 2
    assert "SavedModel:" in out.stdout and "test split (final model)" in out.stdout
    # The same run, never interrupted, ends in the same place (within CPU nondeterminism and the
    # reshuffled order of the epochs after the restart).
    whole = subprocess.run([*args[:6], "uninterrupted", *args[7:]], capture_output=True, text=True, env=env,
                           timeout=300)
    assert whole.returncode == 0, whole.stdout[-2000:]
    (whole_dir,) = (tmp_path / "runs" / "uninterrupted").iterdir()
    resumed_m = RunDir(run_dir).read_json(RunDir.METRICS)
    whole_m = RunDir(whole_dir).read_json(RunDir.METRICS)
    def correct(m):  # over val and test together (30 images), to keep one image from deciding
        return sum(c["correct"] for split in ("val", "test") for c in m[split]["per_class"].values())

    assert abs(correct(resumed_m) - correct(whole_m)) <= 3, (correct(resumed_m), correct(whole_m))


TF_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:|WARNING: All log messages before absl)")


def test_the_main_job_starts_with_its_own_lines_and_names_its_devices(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a newcomer's shell
    env["TF_TRANSFER_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, "-m", "tf_transfer.train", "--runs-dir", str(tmp_path / "runs"),
                             "--export-dir", str(tmp_path / "saved_models")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:  # the start, up to the data summary: no need to train
            lines.append(line.rstrip("\n"))
            if line.startswith("Data:") or len(lines) > 20:
                break
    finally:
        proc.kill()
        proc.wait()
    assert lines[0].startswith("Devices: the CPU (") and "no GPU found" in lines[0], lines
    assert lines[1].startswith("Generating the demo dataset"), lines
    assert not [line for line in lines if TF_NOISE.match(line) or "cuInit" in line or "oneDNN" in line], lines


def test_cli_reports_a_data_error_without_traceback_and_a_users_log_level_wins(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tf_transfer.train", "--data", str(tmp_path / "nowhere"),
                          "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert out.returncode == 2
    assert "does not exist" in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr
    assert any(TF_NOISE.match(line) for line in out.stderr.splitlines()), "TF_CPP_MIN_LOG_LEVEL=0 shows TF's lines"
    assert out.stdout.startswith("Devices: ")


def test_keras_batch_timing_warning_is_hidden_only_while_fitting():
    import logging

    from tf_transfer.training import callbacks as cb

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        message = "Callback method `on_train_batch_end` is slow compared to the batch time"
        with cb.quiet_batch_timing():
            logger.warning(message)
            logger.warning("another warning")
        logger.warning(message)
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning", message]
