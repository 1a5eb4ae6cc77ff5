"""Evaluation metrics, plots, the HTML report, the scratch baseline and the evaluate CLI."""

import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_transfer.data import demo
from tf_transfer.errors import DataError
from tf_transfer.evaluation import metrics as evaluate
from tf_transfer.evaluation import plots
from tf_transfer.folders import RunDir
from tf_transfer.workflows import evaluation

CLASSES = ["a", "b", "c"]
# 6 examples; class "c" is never predicted.
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([
    [0.7, 0.2, 0.1],  # a -> a
    [0.4, 0.5, 0.1],  # a -> b
    [0.1, 0.8, 0.1],  # b -> b
    [0.6, 0.3, 0.1],  # b -> a
    [0.5, 0.3, 0.2],  # c -> a
    [0.2, 0.6, 0.2],  # c -> b
])


def test_metrics_match_hand_computed_values():
    m = evaluate.metrics(LABELS, PROBS, CLASSES, top_k=2)
    assert m["accuracy"] == pytest.approx(2 / 6)
    # top-2: a(0.7,0.2)->{a,b} ok; a->{b,a} ok; b ok; b->{a,b} ok; c->{a,b} no; c->{b,a/c tie} no
    assert m["top_2_accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [1, 1, 0]]
    pa, pb = m["per_class"]["a"], m["per_class"]["b"]
    assert (pa["precision"], pa["recall"], pa["support"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2), 2)
    assert pa["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert pb["precision"] == pytest.approx(1 / 3) and pb["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "correct": 0,
                                   "accuracy": 0.0}
    assert m["macro_avg"]["f1"] == pytest.approx((pa["f1"] + pb["f1"]) / 3)
    assert m["weighted_avg"]["recall"] == pytest.approx(2 / 6)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.4, 0.8, 0.3, 0.2, 0.2])))
    # ECE with 15 bins: confidences 0.7,0.5,0.8,0.6,0.5,0.6 -> bins by value
    conf, correct = PROBS.max(-1), PROBS.argmax(-1) == LABELS
    expected = 0.0
    for lo in np.linspace(0, 1, 16)[:-1]:
        mask = (conf > lo) & (conf <= lo + 1 / 15 + 1e-12)
        if mask.any():
            expected += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    assert m["expected_calibration_error"] == pytest.approx(expected)
    pairs = {(p["true"], p["predicted"]): p["count"] for p in m["most_confused"]}
    assert pairs == {("a", "b"): 1, ("b", "a"): 1, ("c", "a"): 1, ("c", "b"): 1}
    table = evaluate.format_table(m)
    assert "macro avg" in table and "c " in table


def test_confusion_rows_sum_to_supports_and_labels_stay_aligned():
    # Image pixels encode the label, and the dataset reshuffles on every pass: a second pass for
    # labels would not line up with the predictions of the first.
    labels = np.arange(60) % 3
    pixels = (labels * 100.0)[:, None, None, None] * np.ones((60, 2, 2, 3))
    ds = tf.data.Dataset.from_tensor_slices((pixels.astype("float32"), tf.one_hot(labels, 3)))
    ds = ds.shuffle(60, seed=1, reshuffle_each_iteration=True).batch(7)

    def model(x):
        return tf.one_hot(tf.cast(tf.round(tf.reduce_mean(x, axis=[1, 2, 3]) / 100.0), tf.int32), 3)

    m = evaluate.evaluate(model, ds, CLASSES)
    assert m["accuracy"] == 1.0
    assert [sum(row) for row in m["confusion_matrix"]] == [m["per_class"][c]["support"] for c in CLASSES]


def test_every_plot_renders_to_a_png(tmp_path):
    m = evaluate.metrics(LABELS, PROBS, CLASSES)
    history = [{"epoch": i, "phase": 1 if i <= 2 else 2, "loss": 1 / i, "accuracy": i / 5, "val_loss": 1.1 / i,
                "val_accuracy": i / 6} for i in range(1, 5)]
    images = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    figures = {
        "curves": plots.history_curves(history, 2),
        "confusion": plots.confusion(m["confusion_matrix"], CLASSES),
        "f1": plots.per_class_f1(m),
        "grid": plots.predictions_grid(images, LABELS, PROBS, CLASSES, "samples"),
        "distribution": plots.class_distribution({"a": {"train": 3, "val": 1, "test": 1}, "b": {"train": 2}}),
    }
    for name, fig in figures.items():
        path = plots.save(fig, tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_run_report_has_every_section_and_no_network(trained_run):
    run = RunDir(trained_run.run_dir)
    html = run.report_file.read_text()
    for section in ("Summary", "Metrics (test)", "Plots", "Data", "Skipped files", "Export", "Config"):
        assert f"<h2>{section}</h2>" in html
    assert "from scratch, same budget" in html and "phase 1 (frozen backbone)" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched from the network
    assert html.count("data:image/png;base64,") == 6
    for name in ("curves", "confusion_matrix", "per_class_f1", "samples", "worst_mistakes", "class_distribution"):
        assert (run.plots_dir / f"{name}.png").stat().st_size > 2000
    assert "macro avg" in (run.path / RunDir.METRICS_TEXT).read_text()


def test_baseline_and_phase_comparison_are_reported(trained_run):
    run = RunDir(trained_run.run_dir)
    m = run.read_json(RunDir.METRICS)
    assert m["baseline_scratch"]["test"]["accuracy"] is not None
    assert m["phase1"]["test"]["accuracy"] is not None and m["test"]["accuracy"] is not None
    assert m["test"]["accuracy"] > m["baseline_scratch"]["test"]["accuracy"]
    assert run.baseline().metrics_file.is_file()


def test_evaluate_export_on_a_folder_matches_classes_by_name(trained_run, tmp_path):
    folder = demo.write_shapes(tmp_path / "new", classes=("triangle", "circle"), per_class=6, size=64, seed=7)
    out = evaluation.evaluate_export(str(trained_run.export_path.parent), str(folder),
                                     output=str(tmp_path / "eval"))
    m = out.read_json(RunDir.METRICS)
    assert m["num_examples"] == 12 and m["per_class"]["square"]["support"] == 0
    assert m["per_class"]["triangle"]["support"] == 6 and m["accuracy"] >= 0.8
    assert out.report_file.is_file() and (out.plots_dir / "confusion_matrix.png").is_file()
    bad = demo.write_shapes(tmp_path / "bad", classes=("circle", "ring"), per_class=3, size=64)
    with pytest.raises(DataError, match=r"classes ring .* are not classes of the model"):
        evaluation.evaluate_export(str(trained_run.export_path.parent), str(bad), output=str(tmp_path / "e2"))


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_evaluate_cli(trained_run, tmp_path):
    folder = demo.write_shapes(tmp_path / "new", classes=("square", "circle"), per_class=4, size=64, seed=9)
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.evaluate", str(trained_run.export_path),
                           "--data", str(folder), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Report:" in proc.stdout and (tmp_path / "out" / RunDir.METRICS_TEXT).is_file()
