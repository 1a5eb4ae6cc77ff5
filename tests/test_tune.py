"""keras-tuner over the two-phase recipe: both phases per trial, best config reproduces, memory, resume."""

import json
import os
import subprocess
import sys

import pytest

from tf_transfer import config as config_lib
from tf_transfer.workflows import recipe
from tf_transfer.workflows import tuning as tune

from .conftest import interrupt_when

FIX = ["--fix", "phase1.epochs=2", "--fix", "phase2.epochs=1", "--fix", "model.label_smoothing=0.0"]


def _tune_cmd(shapes_dir, tmp_path, trials, directory):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"phase2.unfreeze": {"type": "choice", "values": ["10", "20"]}}))
    return [sys.executable, "-m", "tf_transfer.tune", "--data", str(shapes_dir), "--image-size", "64",
            "--batch-size", "16", "--max-trials", str(trials), "--algorithm", "random", "--tuning-dir",
            str(directory), "--search-space", str(space), "--runs-dir", str(tmp_path / "runs"), *FIX]


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.slow  # most of a minute: in the slow suite since the default one passed ten minutes
def test_search_runs_both_phases_and_the_best_config_reproduces(shapes_dir, tmp_path):
    directory = tmp_path / "tuning"
    proc = subprocess.run(_tune_cmd(shapes_dir, tmp_path, 3, directory), capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = tune.summaries(directory)
    assert len(rows) == 3
    for row in rows:  # two compiles per trial, with different trainable parameter counts
        assert row["trainable_params"]["phase2"] > row["trainable_params"]["phase1"] > 0
    peaks = [r["peak_rss_mb"] for r in sorted(rows, key=lambda r: r["trial_id"])]
    assert peaks[2] <= peaks[0] * 1.15 + 100, peaks  # memory does not grow from trial to trial
    assert (directory / "summary.txt").read_text().startswith("trial_id")
    assert (directory / "hyperparameters.png").stat().st_size > 2000
    best = config_lib.load(directory / "best_config.json")
    assert best.export.enabled and best.phase2.unfreeze in ("10", "20")
    reproduced = recipe.run(best.replace(**{"runs_dir": str(tmp_path / "again"), "export.enabled": False,
                                           "evaluation.report": False}))
    assert reproduced.metrics["val"]["accuracy"] == pytest.approx(rows[0]["val_accuracy"], abs=0.04)


@pytest.mark.slow
def test_interrupted_search_resumes_without_repeating_trials(shapes_dir, tmp_path):
    directory = tmp_path / "tuning"
    cmd = _tune_cmd(shapes_dir, tmp_path, 3, directory)
    oracle = directory / "search" / "oracle.json"

    def first_trial_recorded() -> bool:
        # keras-tuner writes trial.json (COMPLETED) before oracle.json; a kill between the two makes it run
        # that trial again on resume, so wait until the oracle has recorded the end of trial 0
        try:
            return "0" in json.loads(oracle.read_text()).get("end_order", [])
        except (OSError, ValueError):
            return False

    interrupt_when(cmd, first_trial_recorded, tmp_path / "search.log", timeout=300)
    done_before = {r["trial_id"]: r for r in tune.summaries(directory)}
    assert "0" in done_before
    stamp = (directory / "search" / "trial_0" / "trial_summary.json").stat().st_mtime
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = tune.summaries(directory)
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2"]
    assert (directory / "search" / "trial_0" / "trial_summary.json").stat().st_mtime == stamp  # not re-run


def test_search_space_overrides_and_errors():
    space = tune.search_space({"model.dropout": {"type": "float", "min": 0.0, "max": 0.6}}, {"phase1.epochs": 4})
    assert space["model.dropout"]["type"] == "float" and space["phase1.epochs"] == {"type": "fixed", "value": 4}
    config = tune.trial_config(config_lib.Config(), space, {"model.dropout": 0.25, "phase2.epochs": 6}, budget=5)
    assert config.model.dropout == 0.25 and config.phase1.epochs + config.phase2.epochs == 5
    with pytest.raises(tune.TuneError, match=r"unknown config key 'model\.colour'"):
        tune.search_space({"model.colour": {"type": "choice", "values": [1]}})
    with pytest.raises(tune.TuneError, match="expected KEY=VALUE"):
        tune.parse_fixed(["dropout"])
    with pytest.raises(tune.TuneError, match="not valid"):
        tune.hyperparameters({"model.dropout": {"type": "float", "min": 0.5}})


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["bayesian", "hyperband"])
def test_bayesian_and_hyperband_searches_finish(shapes_dir, tmp_path, algorithm):
    base = config_lib.Config().replace(**{"data.source": str(shapes_dir), "data.image_size": 48,
                                          "runs_dir": str(tmp_path / "runs")})
    space = tune.search_space(fixed={"phase1.epochs": 1, "phase2.epochs": 1, "phase2.unfreeze": "10"})
    results = tune.tune(base, space, algorithm, max_trials=2, directory=tmp_path / algorithm, max_epochs=2)
    rows = tune.summaries(tmp_path / algorithm)
    assert len(rows) >= 2 and results["best"]["val_accuracy"] == rows[0]["val_accuracy"]
    if algorithm == "hyperband":  # budgets of 1 and 2 epochs, counted across both phases
        assert {r["config"]["phase1"]["epochs"] + r["config"]["phase2"]["epochs"] for r in rows} <= {1, 2}
