"""Tasks and labels a model did not learn are said out loud: log, metrics.json and report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tf_transfer.evaluation import chance
from tf_transfer.folders import RunDir
from tf_transfer.tasks import Task

from .conftest import SIZE, make_config


def test_binomial_tail_is_exact():
    assert chance.binomial_tail(0, 10, 0.3) == 1.0
    assert chance.binomial_tail(10, 10, 0.5) == pytest.approx(0.5 ** 10)
    assert chance.binomial_tail(2, 3, 0.5) == pytest.approx(0.5)  # P(2) + P(3) = 3/8 + 1/8
    assert chance.binomial_tail(600, 1000, 0.5) < 1e-9


def _single(accuracy: float, n: int, supports: list[int]) -> dict:
    names = [f"c{i}" for i in range(len(supports))]
    return {"num_examples": n, "accuracy": accuracy,
            "per_class": {name: {"support": s} for name, s in zip(names, supports, strict=True)}}


def test_accuracy_within_noise_of_the_majority_class_is_flagged_and_a_clear_win_is_not():
    # 20 examples, majority 12 (0.6): 13 right is within noise, 19 right is not
    flag = chance.single_label("kind", _single(13 / 20, 20, [12, 8]), "test", "none")
    assert flag and flag["chance"] == 0.6 and flag["p_value"] > 0.05 and "'c0'" in flag["message"]
    assert chance.single_label("kind", _single(19 / 20, 20, [12, 8]), "test", "none") is None
    # balanced three classes on 15 examples: 8 right (0.53 against 0.33) is still noise
    assert chance.single_label("", _single(8 / 15, 15, [5, 5, 5]), "val", "none")
    assert chance.single_label("", _single(12 / 15, 15, [5, 5, 5]), "val", "none") is None


def test_splits_too_small_to_tell_are_said_so_not_flagged_as_not_learnt():
    # every one of 4 right against a majority of 2 (0.5): p = 0.0625, the test cannot reject at 4 examples
    perfect = chance.single_label("", _single(1.0, 4, [2, 2]), "test", "none")
    assert perfect["verdict"] == "too_few" and "even 4 of 4 right" in perfect["message"]
    assert chance.describe(perfect).startswith("Cannot tell whether the model was learnt")
    one_class = chance.single_label("", _single(1.0, 3, [3, 0]), "test", "none")
    assert one_class["verdict"] == "too_few" and "one class only" in one_class["message"]
    empty = chance.single_label("kind", {"num_examples": 0, "accuracy": None, "per_class": {}}, "test", "none")
    assert empty["verdict"] == "too_few" and "no examples" in empty["message"]
    assert chance.find({"tasks": {}}, [Task("kind", ("a", "b"))], {}, "test", "none")[0]["verdict"] == "too_few"
    # 5 right of 5, majority 0.4: p = 0.01, decided, and learnt
    assert chance.single_label("", _single(1.0, 5, [2, 2, 1]), "test", "none") is None
    # a label on 2 of 3 examples: even a perfect ranking is within random rankings' noise
    y, probs = np.array([[1], [1], [0]]), np.array([[0.9], [0.8], [0.1]])
    assert chance.multi_label("tags", ["x"], y, probs, "test", "none")[0]["verdict"] == "too_few"


def test_average_precision_within_noise_of_a_random_ranking_is_flagged_with_the_flip_hint():
    rng = np.random.default_rng(0)
    y = np.zeros((200, 3))
    y[:, 0] = rng.random(200) < 0.5  # left
    y[:, 1] = 1 - y[:, 0]  # right
    y[:, 2] = rng.random(200) < 0.3  # learnt
    probs = rng.random((200, 3))
    probs[:, 2] = y[:, 2] * 0.6 + rng.random(200) * 0.5
    flags = chance.multi_label("side", ["left", "right", "big"], y, probs, "test", "horizontal")
    assert [f["label"] for f in flags] == ["left", "right"]
    assert all(f["value"] <= f["noise"] and "horizontal flips swap left and right" in f["hint"] for f in flags)
    assert "--flip none" in chance.describe(flags[0]) and "label 'left' of task 'side'" in chance.describe(flags[0])
    # no flips: no hint; vertical flips do not swap left and right
    assert not chance.multi_label("side", ["left", "right", "big"], y, probs, "test", "vertical")[0]["hint"]
    # the noise level is the spread of random rankings: about the prevalence, a little above it
    assert 0.5 < chance.random_ap_quantile(y[:, 0]) < 0.62


def _write_sides(root: Path, count: int = 120, seed: int = 0) -> Path:
    """Images with a bright square on the left or the right half; a multi-label `side` column naming that
    side (and, at random, a `dim` tag) and a `coin` column of labels drawn at random: none of it can be
    learnt with flips on and global average pooling in front of the head."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = ["path,side,coin"]
    for i in range(count):
        pixels = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        sides = ["left" if i % 2 else "right"] + ["dim"] * int(rng.random() < 0.5)
        x0 = 4 if sides[0] == "left" else SIZE // 2 + 4
        pixels[20:40, x0:x0 + 20] = 230
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append(f"{i}.png,{'|'.join(sides)},{'heads' if rng.random() < 0.5 else 'tails'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_a_run_flags_what_it_did_not_learn_in_the_log_metrics_and_report(tmp_path, hub_handle):
    from tf_transfer.workflows import recipe

    manifest = _write_sides(tmp_path / "sides")
    config = make_config(tmp_path, f"csv:{manifest}", name="sides", **{
        "model.backbone": f"hub:{hub_handle}", "phase1.epochs": 2, "phase2.epochs": 0, "export.enabled": False,
        "data.val_fraction": 0.25, "data.test_fraction": 0.4})
    result = recipe.run(config)
    flags = RunDir(result.run_dir).read_json(RunDir.METRICS)["not_learnt"]
    assert {(f["task"], f["label"]) for f in flags} >= {("coin", None), ("side", "left"), ("side", "right")}
    side = next(f for f in flags if f["label"] == "left")
    assert side["split"] == "test" and "horizontal flips swap left and right" in side["hint"]
    log = RunDir(result.run_dir).log_file.read_text()
    assert "WARNING" in log and "Not learnt: task 'coin'" in log and "--flip none" in log
    report = RunDir(result.run_dir).report_file.read_text()
    assert '<h2>Not learnt</h2><div class="warning">' in report and "label &#x27;left&#x27;" in report
    assert report.index("Not learnt") < report.index("<h2>Summary</h2>")


def test_a_run_that_learnt_everything_flags_nothing(trained_run):
    assert "not_learnt" not in RunDir(trained_run.run_dir).read_json(RunDir.METRICS)
    assert "Not learnt" not in RunDir(trained_run.run_dir).report_file.read_text()


def test_find_reads_one_task_and_several(tmp_path):
    one = chance.find(_single(5 / 10, 10, [5, 5]), [Task("", ("a", "b"))], (None, None), "test", "none")
    assert len(one) == 1 and one[0]["task"] == ""
    y = np.eye(2)[np.arange(40) % 2]
    probs = np.eye(2)[np.arange(40) % 2] * 0.9
    preds = {"head_side": (y, np.ones(40, bool), probs)}
    assert chance.find({"tasks": {}}, [Task("side", ("left", "right"), True)], preds, "test", "horizontal") == []
