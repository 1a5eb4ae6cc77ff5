"""keras-tuner over the whole transfer recipe: each trial is one two-phase training run.

A trial runs exactly what ``python -m tf_transfer.train`` runs (frozen phase, then fine-tuning) with
the trial's values, on a split prepared once for the whole search, and reports the validation
accuracy after phase 2. The best trial is written as a complete config (``best_config.json``) that
``python -m tf_transfer.train --config best_config.json`` reproduces. Re-running the same command
resumes an interrupted search (keras-tuner's own mechanism) without repeating finished trials.

The search space has defaults; ``--search-space FILE`` (JSON) widens or replaces axes and
``--fix KEY=VALUE`` pins one (see the README for the format).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import resource
import time
from collections.abc import Sequence
from pathlib import Path

from tf_transfer import config as config_lib
from tf_transfer import folders, logs
from tf_transfer.config import Config
from tf_transfer.errors import TuneError
from tf_transfer.folders import RunDir

log = logging.getLogger(__name__)

OBJECTIVE = "val_accuracy"
# Axis formats: {"type": "float", "min", "max", "sampling": "linear"|"log"}, {"type": "int", "min", "max",
# "step"}, {"type": "choice", "values": [...]}, {"type": "fixed", "value": v}.
DEFAULT_SPACE: dict[str, dict] = {
    "phase1.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "sampling": "log"},
    "model.dropout": {"type": "choice", "values": [0.0, 0.1, 0.2, 0.3, 0.5]},
    "model.label_smoothing": {"type": "choice", "values": [0.0, 0.05, 0.1]},
    "phase2.unfreeze": {"type": "choice", "values": ["0", "10", "20", "40"]},
    "phase2.learning_rate": {"type": "float", "min": 1e-5, "max": 1e-3, "sampling": "log"},
    "phase1.epochs": {"type": "choice", "values": [3, 5, 10]},
    "phase2.epochs": {"type": "choice", "values": [0, 3, 5, 10]},
}


def parse_fixed(items: Sequence[str]) -> dict:
    """['model.dropout=0.3', ...] -> {'model.dropout': 0.3}; values are JSON when they parse, else strings."""
    out = {}
    keys = {path for path, _, _ in config_lib.leaves()}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in keys:
            raise TuneError(f"--fix {item!r}: expected KEY=VALUE with KEY a config key such as model.dropout")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def search_space(overrides: dict | None = None, fixed: dict | None = None) -> dict[str, dict]:
    """The default space, with axes widened/replaced by `overrides` and pinned by `fixed`."""
    space = copy.deepcopy(DEFAULT_SPACE)
    keys = {path for path, _, _ in config_lib.leaves()}
    for key, axis in (overrides or {}).items():
        if key not in keys:
            raise TuneError(f"search space: unknown config key {key!r}")
        if not isinstance(axis, dict) or axis.get("type") not in ("float", "int", "choice", "fixed"):
            raise TuneError(f"search space: axis {key!r} must be an object with type float, int, choice or fixed; "
                            f"got {axis!r}")
        space[key] = axis
    for key, value in (fixed or {}).items():
        space[key] = {"type": "fixed", "value": value}
    return space


def hyperparameters(space: dict[str, dict]):
    """keras_tuner.HyperParameters for the non-fixed axes."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for key, axis in space.items():
        kind = axis["type"]
        try:
            if kind == "float":
                hp.Float(key, axis["min"], axis["max"], sampling=axis.get("sampling", "linear"))
            elif kind == "int":
                hp.Int(key, axis["min"], axis["max"], step=axis.get("step", 1))
            elif kind == "choice":
                hp.Choice(key, axis["values"])
        except (KeyError, ValueError, TypeError) as e:
            raise TuneError(f"search space: axis {key!r} is not valid ({e}): {axis!r}") from None
    return hp


def trial_config(base: Config, space: dict[str, dict], values: dict, budget: int | None = None) -> Config:
    """The complete config of one trial. A Hyperband budget (total epochs) is split between the
    phases in the proportion the trial's own epochs give."""
    changes = {k: a["value"] for k, a in space.items() if a["type"] == "fixed"}
    changes.update({k: v for k, v in values.items() if k in space})
    config = config_lib.apply_overrides(base, changes)
    if budget:
        e1, e2 = config.phase1.epochs, config.phase2.epochs
        p1 = max(1, round(budget * e1 / max(e1 + e2, 1))) if e1 else 0
        config = config.replace(**{"phase1.epochs": p1, "phase2.epochs": max(0, budget - p1)})
    return config


def _axis_max(axis: dict | None, default):
    if axis is None:
        return default
    return {"fixed": lambda: axis["value"], "choice": lambda: max(axis["values"])}.get(
        axis["type"], lambda: axis["max"])()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_tuner(base: Config, space: dict[str, dict], algorithm: str, max_trials: int, directory: Path,
               max_epochs: int, images, strategy):
    """A keras-tuner Tuner whose trials are tf_transfer two-phase runs."""
    import keras_tuner as kt

    from tf_transfer.workflows import recipe

    objective = kt.Objective(OBJECTIVE, direction="max")
    hp = hyperparameters(space)
    oracles = {
        "random": lambda: kt.oracles.RandomSearchOracle(objective=objective, max_trials=max_trials, seed=base.seed,
                                                        hyperparameters=hp, tune_new_entries=False),
        "bayesian": lambda: kt.oracles.BayesianOptimizationOracle(objective=objective, max_trials=max_trials,
                                                                  seed=base.seed, hyperparameters=hp,
                                                                  tune_new_entries=False),
        "hyperband": lambda: kt.oracles.HyperbandOracle(objective=objective, max_epochs=max_epochs, factor=3,
                                                        hyperband_iterations=1, seed=base.seed, hyperparameters=hp,
                                                        tune_new_entries=False, max_retries_per_trial=0),
    }
    if algorithm not in oracles:
        raise TuneError(f"--algorithm {algorithm!r}: expected random, bayesian or hyperband")

    class TransferTuner(kt.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            from tf_transfer._keras import keras

            keras.backend.clear_session()  # release the previous trial's graphs and variables
            gc.collect()
            values = trial.hyperparameters.values
            budget = values.get("tuner/epochs") if algorithm == "hyperband" else None
            config = trial_config(base, space, values, budget)
            trial_dir = Path(self.get_trial_dir(trial.trial_id))
            run_dir = trial_dir / "run"
            run_dir.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            log.info("Trial %s: %s", trial.trial_id, {k: v for k, v in values.items() if not k.startswith("tuner/")})
            result = recipe.run_prepared(config, run_dir, images, strategy=self.distribution_strategy)
            val = (result.metrics.get("val") or {}).get("accuracy")
            if val is None:
                raise TuneError("tuning needs a validation split: set --val-fraction > 0")
            summary = {"trial_id": trial.trial_id, OBJECTIVE: val, "config": config.to_dict(),
                       "trainable_params": result.trainable_params, "peak_rss_mb": _peak_rss_mb(),
                       "seconds": time.monotonic() - started, "run_dir": str(run_dir)}
            folders.write_json(trial_dir / "trial_summary.json", summary)
            del result
            return {OBJECTIVE: val}

    return TransferTuner(oracle=oracles[algorithm](), hypermodel=None, directory=str(directory),
                         project_name="search", overwrite=False, distribution_strategy=strategy)


def summaries(directory: Path) -> list[dict]:
    """Every finished trial's summary, best first."""
    rows = [json.loads(p.read_text()) for p in sorted((directory / "search").glob("trial_*/trial_summary.json"))]
    return sorted(rows, key=lambda r: -r[OBJECTIVE])


TRIAL_OVERRIDES = {"export.enabled": False, "evaluation.report": False, "evaluation.baseline": "none"}


def write_results(directory: Path, space: dict[str, dict], base: Config) -> dict:
    """best_config.json (the best trial's values on the user's base config, so that train exports
    and reports as usual), summary.csv/txt (best first) and hyperparameters.png."""
    from tf_transfer.evaluation import plots

    rows = summaries(directory)
    if not rows:
        raise TuneError(f"no finished trials in {directory}")
    axes = [k for k, a in space.items() if a["type"] != "fixed"]

    def value(row, key):
        node = row["config"]
        for part in key.split("."):
            node = node[part]
        return node

    best = config_lib.from_dict(rows[0]["config"])
    restored = {key: value({"config": base.to_dict()}, key) for key in TRIAL_OVERRIDES}
    best.replace(**restored).save(directory / "best_config.json")
    header = ["trial_id", OBJECTIVE, *axes, "phase1.epochs", "phase2.epochs", "seconds"]
    header = list(dict.fromkeys(header))
    table = [[r["trial_id"], f"{r[OBJECTIVE]:.4f}", *(value(r, k) for k in header[2:-1]), f"{r['seconds']:.0f}"]
             for r in rows]
    folders.write_csv(directory / "summary.csv", [header, *table])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in [header, *table]]
    folders.write_text(directory / "summary.txt", "\n".join(lines) + "\n")
    fig = plots.metric_vs_hyperparameters([{k: value(r, k) for k in axes} for r in rows],
                                          [r[OBJECTIVE] for r in rows], OBJECTIVE)
    plots.save(fig, directory / "hyperparameters.png")
    return {"best": rows[0], "table": "\n".join(lines)}


def tune(base: Config, space: dict[str, dict], algorithm: str = "random", max_trials: int = 10,
         directory: str | Path = "tuning", max_epochs: int | None = None) -> dict:
    """Run (or resume) a search; returns the best trial's summary and the results table."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with logs.to_file(directory / "tune.log"):
        return _search(base, space, algorithm, max_trials, directory, max_epochs)


def _search(base: Config, space: dict[str, dict], algorithm: str, max_trials: int, directory: Path,
            max_epochs: int | None) -> dict:
    from tf_transfer.training import distribute
    from tf_transfer.workflows import recipe

    folders.write_json(directory / "search_space.json", space)
    base.save(directory / "base_config.json")
    base = recipe.with_modality_defaults(base)
    user_base, base = base, base.replace(**TRIAL_OVERRIDES)  # trials only train and evaluate
    # Before other TF work: some strategies configure the runtime.
    strategy = distribute.create(base.runtime.strategy, base.runtime.tpu)
    images = recipe.modality_for(base).prepare_data()  # image files or texts, split once for every trial
    images.save(RunDir(directory))
    log.info("Data: %s (%d classes)\n%s", images.source, images.num_classes, images.summary_table())
    max_epochs = max_epochs or max(1, _axis_max(space.get("phase1.epochs"), base.phase1.epochs)
                                   + _axis_max(space.get("phase2.epochs"), base.phase2.epochs))
    tuner = make_tuner(base, space, algorithm, max_trials, directory, max_epochs, images, strategy)
    tuner.search()
    results = write_results(directory, space, user_base)
    log.info("Trials (best first):\n%s", results["table"])
    log.info("Best %s %.4f (trial %s). Reproduce it with:\n  python -m tf_transfer.train --config %s",
             OBJECTIVE, results["best"][OBJECTIVE], results["best"]["trial_id"], directory / "best_config.json")
    return results
