"""Several heads on one backbone: CSV label columns as tasks, multi-label cells, masked (empty) cells,
per-task losses and metrics, thresholds, and the export, clients, predict and evaluate with several tasks."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tf_transfer import config as config_lib
from tf_transfer import tasks as tasks_lib
from tf_transfer.config import DataConfig
from tf_transfer.data import datasets, sources
from tf_transfer.errors import ConfigError, DataError
from tf_transfer.evaluation import metrics as metrics_lib
from tf_transfer.folders import ModelDir, RunDir
from tf_transfer.tasks import Task

from .conftest import SIZE


def _write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_label_columns_become_tasks_with_multi_label_and_masked_cells(manifest):
    catalog = sources.resolve(f"csv:{manifest}")
    assert [(t.name, t.multi_label) for t in catalog.tasks] == [("shape", False), ("colour", False), ("tags", True)]
    assert catalog.tasks[0].class_names == ("circle", "square", "triangle")
    assert set(catalog.tasks[2].class_names) == {"dark", "light", "noisy", "large"}
    examples = catalog.partitions["all"]
    rows = list(csv.DictReader(manifest.open()))
    by_path = {str(manifest.parent / r["path"]): r for r in rows}
    for e in examples:
        row = by_path[e.key]
        shape, colour, tags = e.targets
        assert catalog.tasks[0].class_names[shape[0]] == row["shape"] == catalog.class_names[e.label]
        assert (colour is None) == (row["colour"] == "")
        assert {catalog.tasks[2].class_names[i] for i in tags} == set(row["tags"].split("|"))
    assert sum(e.targets[1] is None for e in examples) > 10  # the fixture leaves some colours unlabelled


def test_tasks_flag_picks_columns_and_one_label_column_stays_the_one_task_case(manifest):
    catalog = sources.resolve(f"csv:{manifest}", tasks="tags,shape")
    assert [t.name for t in catalog.tasks] == ["tags", "shape"]
    plain = _write(manifest.parent / "plain.csv", [["path", "label"], ["images/0000.png", "circle"],
                                                   ["images/0001.png", "square"]])
    one = sources.resolve(f"csv:{plain}")
    assert one.tasks == [] and one.partitions["all"][0].targets == ()


@pytest.mark.parametrize("rows, tasks, message", [
    ([["path", "shape"], ["images/0000.png", "circle"]], "size", r"no label column size; its label columns are shape"),
    ([["path", "shape", "tags"], ["images/0000.png", "circle", "red||round"]], "",
     r"line 2: label cell 'red\|\|round' has an empty item"),
    ([["path", "shape"], ["images/0000.png", "circle"], ["", "square"]], "", r"line 3: expected a path and at least"),
    ([["path", "shape", "colour"], ["images/0000.png", "", ""]], "", r"line 2: expected a path and at least one label"),
    ([["path", "my shape"], ["images/0000.png", "circle"]], "", r"task name 'my shape' cannot name a head"),
])
def test_bad_manifests_name_the_row_or_column(manifest, rows, tasks, message):
    bad = _write(manifest.parent / "bad.csv", rows)
    with pytest.raises(DataError, match=message):
        sources.resolve(f"csv:{bad}", tasks=tasks)


def test_tasks_flag_needs_a_manifest(shapes_dir):
    with pytest.raises(DataError, match="--tasks shape: named tasks come from the label columns of a CSV"):
        sources.resolve(str(shapes_dir), tasks="shape")


def test_per_task_flags_parse_and_refuse_unknown_tasks():
    tasks = [Task("shape", ("a", "b")), Task("tags", ("x",), True)]
    assert tasks_lib.per_task("tags=0.5", tasks, "--task-weights", float, 1.0) == {"shape": 1.0, "tags": 0.5}
    assert tasks_lib.per_task("shape=off", tasks, "--task-class-weights", bool, True) == {"shape": False,
                                                                                         "tags": True}
    with pytest.raises(ConfigError, match=r"--task-weights: expected task=value pairs for the tasks shape, tags; "
                                          r"got 'colour=2'"):
        tasks_lib.per_task("colour=2", tasks, "--task-weights")
    with pytest.raises(ConfigError, match="the value for 'shape' must be float"):
        tasks_lib.per_task("shape=heavy", tasks, "--task-weights")


def test_split_is_stratified_on_the_first_task_and_saved_with_every_target(manifest, tmp_path):
    cfg = DataConfig(source=f"csv:{manifest}", image_size=SIZE, batch_size=8)
    data = datasets.prepare(cfg, seed=0)
    for split in ("val", "test"):  # 150 rows, 50 per shape: 15% of each shape
        assert sorted(data.counts(0)[c][split] for c in data.tasks[0].class_names) == [8, 8, 8]
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    data.save(run)
    again = datasets.load_split(run)
    assert again.named_tasks == data.named_tasks and again.splits == data.splits
    assert "task colour (single-label):" in data.summary_table() and "(no label)" in data.summary_table()


def test_pipeline_targets_are_multi_hot_and_unlabelled_cells_weigh_nothing(manifest):
    cfg = DataConfig(source=f"csv:{manifest}", image_size=SIZE, batch_size=8, augment=False, cache="none",
                     task_class_weights="colour=on")
    data = datasets.prepare(cfg, seed=0)
    x, ys, ws = next(iter(datasets.pipeline(data, "train", cfg, SIZE, 0)))
    assert x.shape == (8, SIZE, SIZE, 3) and set(ys) == set(ws) == {"head_shape", "head_colour", "head_tags"}
    colour_weights = data.class_weights(1)
    for i, e in enumerate(data.splits["train"][:8]):
        shape, colour, tags = e.targets
        assert list(ys["head_shape"][i].numpy()) == [float(j == shape[0]) for j in range(3)]
        assert ws["head_shape"][i] == 1.0
        assert set(np.flatnonzero(ys["head_tags"][i].numpy())) == set(tags)
        expected = 0.0 if colour is None else colour_weights[colour[0]]
        assert ws["head_colour"][i].numpy() == pytest.approx(expected)
        assert ys["head_colour"][i].numpy().sum() == (0 if colour is None else 1)


def test_a_masked_task_does_not_move_its_head():
    """Loss weights of 0 (unlabelled cells) must leave that task's head untouched while the others learn."""
    import tensorflow as tf

    from tf_transfer._keras import keras
    from tf_transfer.config import Config
    from tf_transfer.models import backbones, classifier
    from tf_transfer.training import phases

    keras.utils.set_random_seed(0)
    tasks = [Task("shape", ("a", "b", "c")), Task("tags", ("x", "y"), True)]
    bb = backbones.build("mobilenet_v2_0.35", "none", 32, "", "auto")
    model = classifier.build_classifier(bb, tasks, Config().model)
    classifier.freeze_backbone(model)
    phases.compile_for(model, phases.stages(Config())[0], Config())
    before = {h.name: [w.numpy().copy() for w in h.weights] for h in classifier.head_layers(model)}
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    ys = {"head_shape": np.eye(3)[np.arange(8) % 3].astype("float32"),
          "head_tags": np.ones((8, 2), "float32")}
    ws = {"head_shape": np.ones(8, "float32"), "head_tags": np.zeros(8, "float32")}
    model.fit(tf.data.Dataset.from_tensors((x, ys, ws)), epochs=2, verbose=0)
    moved = {name: max(float(np.abs(w.numpy() - b).max()) for w, b in zip(model.get_layer(name).weights, old,
                                                                          strict=True))
             for name, old in before.items()}
    assert moved["head_shape"] > 1e-4 and moved["head_tags"] == 0.0
    assert model.get_layer("head_tags").get_layer("probabilities").activation.__name__ == "sigmoid"


def test_multi_label_metrics_and_thresholds():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], "float32")
    probs = np.array([[0.9, 0.2], [0.6, 0.3], [0.4, 0.35], [0.1, 0.1]], "float32")
    thresholds = metrics_lib.choose_thresholds(y, probs)
    assert 0.4 < thresholds[0] < 0.6 and 0.2 < thresholds[1] < 0.3  # best F1: both positives of each label kept
    m = metrics_lib.multilabel_metrics(y, probs, ["a", "b"], thresholds)
    assert m["per_class"]["a"]["f1"] == 1.0 and m["per_class"]["b"]["f1"] == 1.0 and m["exact_match"] == 1.0
    at_half = metrics_lib.multilabel_metrics(y, probs, ["a", "b"])  # 0.5: label b is never predicted
    assert at_half["per_class"]["b"]["recall"] == 0.0 and at_half["macro_f1"] == 0.5
    assert at_half["micro_f1"] == pytest.approx(2 / 3)  # tp 2, fp 0, fn 2
    assert at_half["per_class"]["b"]["average_precision"] == 1.0  # the ranking is perfect all the same
    y2 = np.array([[1], [0], [1]], "float32")
    assert metrics_lib.average_precision(y2[:, 0], np.array([0.9, 0.8, 0.1])) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics_lib.choose_thresholds(np.zeros((3, 1)), np.full((3, 1), 0.7)) == [0.5]  # no positives


def test_multi_label_outputs_keep_the_labels_over_their_thresholds():
    import tensorflow as tf

    from tf_transfer.serving import signatures

    scores = tf.constant([[0.9, 0.2, 0.6], [0.1, 0.05, 0.1]])
    out = signatures.multi_label(scores, ["a", "b", "c"], [0.5, 0.1, 0.7], "tags_")
    assert [[c.decode() for c in row] for row in out["tags_classes"].numpy()] == [["a", "b", ""], ["", "", ""]]
    np.testing.assert_allclose(out["tags_scores"].numpy(), [[0.9, 0.2, 0.0], [0.0, 0.0, 0.0]])
    # a label with a higher score but under its own threshold comes after the ones over theirs
    np.testing.assert_allclose(out["tags_all_scores"].numpy(), scores.numpy())


# --- one trained run with three tasks (conftest's multitask_run), shared by the tests below


@pytest.mark.slow
def test_every_task_learns_and_the_report_has_a_section_per_task(multitask_run):
    tasks = multitask_run.metrics["test"]["tasks"]
    assert set(tasks) == {"shape", "colour", "tags"}
    # chance is 1/3; colour has only ~16 labelled test images (a fifth are masked): judge it on val and test
    colour = [multitask_run.metrics[s]["tasks"]["colour"]["accuracy"] for s in ("val", "test")]
    assert tasks["shape"]["accuracy"] > 0.6 and sum(colour) / 2 > 0.6
    assert tasks["colour"]["num_examples"] < multitask_run.metrics["test"]["num_examples"]  # masked rows
    assert tasks["tags"]["mean_average_precision"] > 0.7 and tasks["tags"]["multi_label"]
    assert len(multitask_run.metrics["thresholds"]["tags"]) == 4
    report = multitask_run.run.report_file.read_text()
    for name in ("shape", "colour", "tags"):
        assert f"Metrics (test): task {name}" in report
    assert (multitask_run.run.plots_dir / "tags_per_class_f1.png").is_file()
    log = multitask_run.run.log_file.read_text()
    assert "Phase 1 trains the head on cached features" in log  # the feature cache serves several heads
    history = multitask_run.run.epochs()
    assert {"val_head_shape_accuracy", "val_head_tags_accuracy", "val_accuracy"} <= set(history[0])
    assert history[0]["val_accuracy"] == pytest.approx(np.mean([history[0][f"val_head_{t}_accuracy"]
                                                                for t in ("shape", "colour", "tags")]))


@pytest.mark.slow
def test_the_export_serves_every_task_and_one_task_exports_are_unchanged(multitask_run):
    import tensorflow as tf

    path = multitask_run.export_path
    task_file = json.loads((path / ModelDir.TASKS).read_text())["tasks"]
    assert [t["name"] for t in task_file] == ["shape", "colour", "tags"]
    thresholds = task_file[2]["thresholds"]
    assert len(thresholds) == 4
    assert thresholds == pytest.approx([multitask_run.metrics["thresholds"]["tags"][i] for i in range(4)])
    assert (path / "labels_tags.txt").read_text().split() == task_file[2]["class_names"]
    assert not (path / ModelDir.LABELS).exists() and not (path / ModelDir.TFLITE).exists()  # TFLite: skipped
    loaded = tf.saved_model.load(str(path))
    assert "classify" not in loaded.signatures
    files = [e.key for e in datasets.load_split(multitask_run.run).splits["test"]][:4]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([Path(f).read_bytes() for f in files]))
    assert set(out) == {f"{t}_{o}" for t in ("shape", "colour") for o in ("scores", "classes", "top_k_scores",
                                                                         "top_k_classes")} | \
        {"tags_classes", "tags_scores", "tags_all_scores"}
    all_scores, classes = out["tags_all_scores"].numpy(), out["tags_classes"].numpy()
    for row, names in zip(all_scores, classes, strict=True):
        over = [task_file[2]["class_names"][j] for j in np.argsort(-row, kind="stable") if row[j] >= thresholds[j]]
        assert [n.decode() for n in names if n] == over
    cli = subprocess.run(["saved_model_cli", "show", "--dir", str(path), "--tag_set", "serve", "--signature_def",
                          "serving_default"], capture_output=True, text=True)
    assert "outputs['tags_all_scores']" in cli.stdout and "outputs['shape_top_k_classes']" in cli.stdout


@pytest.mark.slow
def test_clients_server_predict_and_evaluate_handle_several_tasks(multitask_run, manifest, tmp_path):
    from tf_transfer import serving
    from tf_transfer.serving import server as serve

    path = multitask_run.export_path
    files = [e.key for e in datasets.load_split(multitask_run.run).splits["test"]][:6]
    raw = [Path(f).read_bytes() for f in files]
    expected = serving.LocalModel(path).predict(raw)
    assert set(expected[0].tasks) == {"shape", "colour", "tags"} and expected[0].top_classes == []
    srv = serve.LocalServer([path.parent], port=0, grpc_port=0).start()
    try:
        for client in (serving.RestClient(f"http://127.0.0.1:{srv.port}", "multi"),
                       serving.GrpcClient(f"127.0.0.1:{srv.grpc_port}", "multi")):
            got = client.predict(raw)
            assert [{t: p.top_classes for t, p in g.tasks.items()} for g in got] == \
                [{t: p.top_classes for t, p in e.tasks.items()} for e in expected]
    finally:
        srv.stop()
    out_csv = tmp_path / "pred.csv"
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.predict", str(path), *files[:2], "--output",
                           str(out_csv)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shape: " in proc.stdout and "; tags: " in proc.stdout
    rows = list(csv.DictReader(out_csv.open()))
    assert {r["task"] for r in rows} == {"shape", "colour", "tags"}
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.evaluate", str(path), "--data", f"csv:{manifest}",
                           "--output", str(tmp_path / "eval")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "eval" / RunDir.METRICS).read_text())
    assert m["tasks"]["shape"]["num_examples"] == 150 and m["tasks"]["colour"]["num_examples"] < 150
    assert m["tasks"]["tags"]["thresholds"] == dict(zip(json.loads((path / ModelDir.TASKS).read_text())["tasks"][2][
        "class_names"], json.loads((path / ModelDir.TASKS).read_text())["tasks"][2]["thresholds"], strict=True))


@pytest.mark.slow
def test_resuming_a_finished_multitask_run_trains_nothing_and_reexports_nothing(multitask_run):
    from tf_transfer.workflows import recipe

    again = recipe.run(multitask_run.config, multitask_run.run_dir)
    assert again.export_path == multitask_run.export_path
    assert again.metrics["test"]["tasks"]["shape"]["accuracy"] == \
        multitask_run.metrics["test"]["tasks"]["shape"]["accuracy"]
    assert len(again.history) == len(multitask_run.history)


MIRRORED_TASKS = """
import json, sys
from tf_transfer import config as config_lib
from tf_transfer.workflows import recipe
base = config_lib.Config().replace(**{
    "runs_dir": sys.argv[2], "data.source": "csv:" + sys.argv[1], "data.image_size": 48, "data.augment": False,
    "model.dropout": 0.0, "phase1.epochs": 2, "phase2.epochs": 1, "phase1.patience": 0, "phase2.patience": 0,
    "export.enabled": False, "evaluation.report": False, "phase2.unfreeze": "10", "model.task_weights": "tags=2"})
out = {}
for name, strategy, batch in (("default", "default", 16), ("mirrored", "mirrored", 8)):
    r = recipe.run(base.replace(**{"name": name, "runtime.strategy": strategy, "data.batch_size": batch}))
    out[name] = {"val": {t: m["accuracy"] for t, m in r.metrics["val"]["tasks"].items()},
                 "heads": {h: r.model.get_layer(h).get_layer("probabilities").kernel.numpy().tolist()
                           for h in ("head_shape", "head_colour", "head_tags")},
                 "replicas": r.model.distribute_strategy.num_replicas_in_sync}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_strategy_trains_several_heads_like_the_default_one(manifest, tmp_path):
    from .conftest import run_on_two_cpus

    out = run_on_two_cpus(MIRRORED_TASKS, manifest, tmp_path / "runs", timeout=600)
    assert out["mirrored"]["replicas"] == 2 and out["default"]["replicas"] == 1
    assert out["mirrored"]["val"] == pytest.approx(out["default"]["val"], abs=0.05)
    for head in ("head_shape", "head_colour", "head_tags"):  # masked colour rows and weighted tags alike
        np.testing.assert_allclose(out["mirrored"]["heads"][head], out["default"]["heads"][head], atol=2e-3)


@pytest.mark.slow
def test_tuning_searches_a_multitask_recipe_on_the_mean_task_accuracy(manifest, tmp_path):
    from tf_transfer.workflows import tuning

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"model.dropout": {"type": "choice", "values": [0.0, 0.3]}}))
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.tune", "--data", f"csv:{manifest}", "--tasks",
                           "shape,tags", "--task-weights", "tags=0.5", "--image-size", str(SIZE), "--batch-size",
                           "16", "--max-trials", "2", "--algorithm", "random", "--tuning-dir", str(tmp_path / "t"),
                           "--search-space", str(space), "--runs-dir", str(tmp_path / "runs"),
                           "--fix", "phase1.epochs=2", "--fix", "phase2.epochs=1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = tuning.summaries(tmp_path / "t")
    assert len(rows) == 2 and all(0.3 < r["val_accuracy"] <= 1.0 for r in rows)
    best = config_lib.load(tmp_path / "t" / "best_config.json")
    assert best.data.tasks == "shape,tags" and best.model.task_weights == "tags=0.5"


@pytest.mark.slow
def test_a_multitask_run_and_its_export_publish_the_shared_backbone(multitask_run, tmp_path):
    import tensorflow as tf

    from tf_transfer.folders import PublishedDir
    from tf_transfer.workflows import publishing

    for source, name in ((multitask_run.run_dir, "from_run"), (multitask_run.export_path, "from_export")):
        out = publishing.publish(str(source), str(tmp_path / name))
        features = tf.saved_model.load(str(out))(tf.zeros([1, 64, 64, 3]))
        assert features.shape[-1] > 0 and PublishedDir(out).card()["input"]["shape"][1] == 64
