"""Fine-tuning: discriminative learning rates, schedules, staged unfreezing, keeping the best weights
across stages, monitoring, and test-time augmentation."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_transfer._keras import keras
from tf_transfer.config import Config, ModelConfig
from tf_transfer.folders import RunDir
from tf_transfer.models import backbones, classifier
from tf_transfer.training import optimizers, phases
from tf_transfer.training.phases import Stage

from .conftest import history_lines, interrupt_when, make_config, only_run_dir, run_on_two_cpus

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
X = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
Y = np.eye(3, dtype="float32")[np.arange(16) % 3]


def _moves(decay: float, optimizer_for=None) -> dict[str, float]:
    """Mean absolute change of the top block (Conv_1), the next one (block_16) and the stem (Conv1) after a
    few fine-tuning steps of the whole backbone at one learning rate, with --lr-decay `decay`."""
    keras.utils.set_random_seed(0)
    model = classifier.build_classifier(backbones.build("mobilenet_v2_0.35", "imagenet", 32), 3,
                                        ModelConfig(dropout=0.0))
    classifier.unfreeze_top(model, "all")
    stage = Stage(2, 2, 1e-3, 0, "all", lr_decay=decay)
    model.compile((optimizer_for or phases.optimizer)(stage, model, None), "categorical_crossentropy")
    before = {w.name: w.numpy().copy() for w in model.trainable_weights}
    model.fit(X, Y, epochs=2, batch_size=8, verbose=0, shuffle=False)

    def moved(prefix):
        return float(np.mean([np.abs(w.numpy() - before[w.name]).mean() for w in model.trainable_weights
                              if w.name.startswith(prefix)]))
    return {"top": moved("Conv_1/"), "next": moved("block_16_project/"), "stem": moved("Conv1/"),
            "head": moved("probabilities/")}


def test_blocks_group_layers_top_first():
    bb = backbones.build("mobilenet_v2_0.35", "none", 32).layer
    blocks = optimizers.backbone_blocks(bb)
    names = [[la.name for la in b] for b in blocks]
    assert names[0] == ["Conv_1", "Conv_1_bn"] and names[1][0] == "block_16_expand"
    assert names[-1][:2] == ["Conv1", "bn_Conv1"] and len(blocks) == 18
    rates = optimizers.layer_rates(classifier.build_classifier(backbones.build("mobilenet_v2_0.35", "none", 32), 3,
                                                               ModelConfig()), 0.5)
    assert rates["Conv_1/kernel:0"] == 1.0 and rates["block_16_project/kernel:0"] == 0.5
    assert rates["Conv1/kernel:0"] == pytest.approx(0.5 ** 17)


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_lr_decay_gives_lower_blocks_really_lower_rates():
    moves = _moves(1e-6)
    assert moves["top"] > 1e-5 and moves["head"] > 1e-5
    assert moves["next"] / moves["top"] < 1e-5  # about a millionth: Adam's steps scale with the rate
    assert moves["stem"] == 0.0  # 1e-6 ** 17 is below float32 resolution


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_lr_decay_one_trains_exactly_as_before():
    plain = _moves(1.0, lambda stage, model, steps: keras.optimizers.Adam(stage.learning_rate))
    ours = _moves(1.0, lambda stage, model, steps: optimizers.DiscriminativeAdam(
        stage.learning_rate, factors=optimizers.layer_rates(model, 1.0)))
    assert ours == plain and phases.optimizer(Stage(2, 1, 1e-3, 0, "all"), None, None).__class__ is \
        keras.optimizers.Adam


def test_warmup_cosine_schedule():
    schedule = optimizers.WarmupCosine(1e-3, total=100, warmup=10)
    values = [float(schedule(s)) for s in (0, 9, 10, 55, 99, 150)]
    assert values[0] == pytest.approx(1e-4) and values[1] == pytest.approx(1e-3) and values[2] == pytest.approx(1e-3)
    assert values[3] == pytest.approx(5e-4, rel=0.02) and values[4] < 1e-6 and values[5] == 0.0
    stage = Stage(2, 4, 1e-3, 0, "10", schedule="cosine", warmup=0.25)
    assert isinstance(phases.learning_rate(stage, 10), optimizers.WarmupCosine)
    assert phases.learning_rate(Stage(1, 4, 1e-3, 0, schedule="cosine"), 10) == 1e-3  # phase 1 stays constant


def test_stage_plan_from_the_config():
    config = Config().replace(**{"phase2.unfreeze": "20,60,all", "phase2.epochs": 8})
    _, *stages = phases.stages(config)
    assert [(s.name, s.unfreeze, s.epochs) for s in stages] == [
        ("phase2.1", "20", 2), ("phase2.2", "60", 3), ("phase2.3", "all", 3)]
    config = config.replace(**{"phase2.stage_epochs": "1,1,6"})
    assert [s.epochs for s in phases.stages(config)[1:]] == [1, 1, 6]
    assert [s.name for s in phases.stages(Config())] == ["phase1", "phase2"]
    for bad in ({"phase2.stage_epochs": "1,2"}, {"phase2.stage_epochs": "1,1,1"}, {"phase2.lr_decay": 0.0}):
        with pytest.raises(Exception, match="phase2"):
            config.replace(**bad)


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_staged_unfreezing_with_cosine_and_decay_runs_and_records_its_stages(shapes_dir, tmp_path):
    from tf_transfer.workflows import recipe

    config = make_config(tmp_path, str(shapes_dir), **{
        "data.image_size": 32, "phase1.epochs": 2, "phase2.epochs": 4, "phase2.unfreeze": "10,all",
        "phase2.schedule": "cosine", "phase2.lr_decay": 0.7, "monitor": "val_accuracy", "export.enabled": False})
    result = recipe.run(config)
    stages = RunDir(result.run_dir).history()["stages"]
    assert [(s["name"], s["first_epoch"], s["last_epoch"]) for s in stages] == [
        ("phase1", 1, 2), ("phase2.1", 3, 4), ("phase2.2", 5, 6)]
    assert result.trainable_params["phase1"] < result.trainable_params["phase2.1"] < result.trainable_params["phase2.2"]
    rates = [e["learning_rate"] for e in result.history if e["stage"] == "phase2.2"]
    assert rates[1] < rates[0]  # cosine decay within the stage
    assert all("score" in s for s in stages) and "Stages" in RunDir(result.run_dir).report_file.read_text()


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_a_stage_that_does_not_beat_the_best_so_far_is_rolled_back(shapes_dir, tmp_path):
    from tf_transfer.workflows import recipe

    config = make_config(tmp_path, str(shapes_dir), **{
        "data.image_size": 32, "phase1.epochs": 3, "phase2.epochs": 1, "phase2.unfreeze": "all",
        "phase2.learning_rate": 3.0, "monitor": "val_loss", "export.enabled": False,
        "evaluation.report": False})  # a learning rate that wrecks the model
    result = recipe.run(config)
    run = RunDir(result.run_dir)
    phase1, phase2 = run.history()["stages"]
    assert phase2["kept"] is False and phase2["rolled_back_to"] == "phase1" and phase2["score"] > phase1["score"]
    assert result.metrics["val"]["loss"] == pytest.approx(result.metrics["phase1"]["val"]["loss"], rel=1e-4)
    assert "did not beat phase1 on val_loss" in run.log_file.read_text()


@pytest.mark.slow
def test_tta_in_evaluation_and_in_the_export(trained_run, tmp_path):
    from tf_transfer.data import datasets
    from tf_transfer.serving import savedmodel
    from tf_transfer.tasks import Task
    from tf_transfer.workflows.outputs import evaluate_splits

    config = trained_run.config
    data = datasets.load_split(RunDir(trained_run.run_dir))
    val = {"val": datasets.pipeline(data, "val", config.data, 64, config.seed, batch_size=16)}
    tasks = [Task("", tuple(trained_run.class_names))]
    plain = evaluate_splits(trained_run.model, val, tasks, config)
    flipped = evaluate_splits(trained_run.model, val, tasks, config, tta=True)
    assert plain["val"]["num_examples"] == flipped["val"]["num_examples"] > 0
    assert plain["val"]["log_loss"] != flipped["val"]["log_loss"]
    spec = savedmodel.ExportSpec(trained_run.class_names, 64, {}, {}, samples=savedmodel.synthetic_images(64),
                                 keras_traces=False, tta=True)
    path = savedmodel.export_classifier(trained_run.model, spec, tmp_path, "tta")
    x = tf.round(tf.random.stateless_uniform([2, 64, 64, 3], [1, 2], 0, 255))  # whole values: served as uint8
    served = tf.saved_model.load(str(path)).signatures["serving_pixels"](pixels=x)["scores"].numpy()
    expected = (trained_run.model(x, training=False).numpy() + trained_run.model(x[:, :, ::-1], training=False)
                .numpy()) / 2
    np.testing.assert_allclose(served, expected, atol=1e-4)


DISTRIBUTED = """
import json, sys
import numpy as np
from tf_transfer._keras import keras
from tf_transfer.config import ModelConfig
from tf_transfer.models import backbones, classifier
from tf_transfer.training import phases
from tf_transfer.training.phases import Stage
keras.mixed_precision.set_global_policy("mixed_float16")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = classifier.build_classifier(backbones.build("mobilenet_v2_0.35", "imagenet", 32), 3, ModelConfig(dropout=0))
    classifier.unfreeze_top(model, "all")
    model.compile(phases.optimizer(Stage(2, 2, 1e-3, 0, "all", lr_decay=1e-3), model, None), "categorical_crossentropy")
before = {w.name: w.numpy().copy() for w in model.trainable_weights}
x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32"); y = np.eye(3)[np.arange(16) % 3]
model.fit(x, y, epochs=2, batch_size=8, verbose=0)
# The largest step, not the mean: Adam's first step is lr * sign(gradient) for every weight with a gradient,
# while saturated ReLU6 units leave many weights of a layer unmoved (which would blur a mean).
moved = lambda p: float(max(np.abs(w.numpy() - before[w.name]).max() for w in model.trainable_weights
                            if w.name.startswith(p)))
replicas = strategy.num_replicas_in_sync
print(json.dumps({"top": moved("Conv_1/"), "next": moved("block_16_project/"), "replicas": replicas}))
"""


@pytest.mark.slow
def test_lr_decay_under_a_mirrored_strategy_with_mixed_precision():
    moves = run_on_two_cpus(DISTRIBUTED, timeout=600)
    assert moves["replicas"] == 2 and moves["top"] > 1e-5 and moves["next"] / moves["top"] < 1e-2


@pytest.mark.slow
def test_a_run_killed_in_the_second_stage_resumes_there(shapes_dir, tmp_path):
    args = [sys.executable, "-m", "tf_transfer.train", "--data", str(shapes_dir), "--name", "staged",
            "--runs-dir", str(tmp_path / "runs"), "--image-size", "32", "--batch-size", "8", "--no-augment",
            "--phase1-epochs", "1", "--phase2-epochs", "22", "--unfreeze", "10,all", "--stage-epochs", "2,20",
            "--phase1-patience", "0", "--phase2-patience", "0", "--no-export", "--no-report"]
    runs = tmp_path / "runs" / "staged"
    interrupt_when(args, lambda: sum(e.get("stage") == "phase2.2" for e in history_lines(only_run_dir(runs))) >= 2,
                   tmp_path / "killed.log")
    run = RunDir(only_run_dir(runs))
    assert set(run.state()["done"]) >= {"phase1", "phase2.1"} and "phase2.2" not in run.state()["done"]
    resumed = subprocess.run([sys.executable, "-m", "tf_transfer.train", "--resume", str(run.path)],
                             capture_output=True, text=True, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Phase 2, stage 1 of 2 (unfreeze 10) finished earlier" in resumed.stdout
    epochs = run.history()["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, 24))
    assert [e["stage"] for e in epochs] == ["phase1"] + ["phase2.1"] * 2 + ["phase2.2"] * 20
