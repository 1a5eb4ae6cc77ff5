"""Several heads on one backbone against one model per task (../shared/datasets/cifar10_small).

Three tasks on the same CIFAR-10 photos: `cls` (the ten classes), `group` (animal or vehicle) and
`attributes` (multi-label, from a fixed table: wheels, flies, water, four_legs, pet, metal). The joint
model trains one backbone with three heads; the baseline trains one model per task with the same
recipe and epoch budget. Reported: each task's test metrics, the total training time, and the serving
cost of one joint export against the three single-task exports (a batch of JPEG test images through
serving_default, timed in turns).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from benchmarks.common import interleaved, spread
from tf_transfer import config as config_lib
from tf_transfer.workflows import recipe

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10_small"
SIZE = 96
VEHICLES = ("airplane", "automobile", "ship", "truck")
ATTRIBUTES = {"airplane": "flies|metal", "automobile": "wheels|metal", "bird": "flies", "cat": "four_legs|pet",
              "deer": "four_legs", "dog": "four_legs|pet", "frog": "water", "horse": "four_legs",
              "ship": "water|metal", "truck": "wheels|metal"}
TASKS = ("cls", "group", "attributes")


def manifest(workdir: Path) -> Path:
    """path,cls,group,attributes,split over CIFAR's train and test folders."""
    rows = ["path,cls,group,attributes,split"]
    for split in ("train", "test"):
        for folder in sorted((CIFAR / split).iterdir()):
            c = folder.name
            group = "vehicle" if c in VEHICLES else "animal"
            rows += [f"{f},{c},{group},{ATTRIBUTES[c]},{split}" for f in sorted(folder.iterdir())]
    path = workdir / "cifar_tasks.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _config(workdir: Path, name: str, source: Path, tasks: str, seed: int, epochs: tuple[int, int]):
    return config_lib.Config().replace(**{
        "name": name, "seed": seed, "runs_dir": str(workdir / "runs"), "data.source": f"csv:{source}",
        "data.tasks": tasks, "data.image_size": SIZE, "data.val_fraction": 0.1, "phase1.epochs": epochs[0],
        "phase2.epochs": epochs[1], "phase1.patience": 0, "phase2.patience": 0,
        "export.export_dir": str(workdir / "saved_models"), "evaluation.report": False})


def _task_scores(m: dict) -> dict:
    """The headline metric of each task in a test split's metrics: accuracy, or micro F1 and mAP."""
    out = {}
    for name, tm in m["tasks"].items():
        out[name] = ({"micro_f1": tm["micro_f1"], "mean_average_precision": tm["mean_average_precision"]}
                     if tm.get("multi_label") else {"accuracy": tm["accuracy"], "macro_f1": tm["macro_avg"]["f1"]})
    return out


def train(workdir: Path, source: Path, seed: int, epochs: tuple[int, int]) -> dict:
    """The joint model and one model per task (same recipe, data split and budget), one seed."""
    started = time.monotonic()
    joint = recipe.run(_config(workdir, f"joint_{seed}", source, ",".join(TASKS), seed, epochs))
    out = {"joint": {"seconds": time.monotonic() - started, "tasks": _task_scores(joint.metrics["test"]),
                     "export": str(joint.export_path)}}
    separate = {"seconds": 0.0, "tasks": {}, "exports": []}
    for task in TASKS:
        started = time.monotonic()
        # a named task even alone (tasks=...), so each model's metrics read like the joint model's
        single = recipe.run(_config(workdir, f"{task}_{seed}", source, task, seed, epochs))
        separate["seconds"] += time.monotonic() - started
        separate["tasks"].update(_task_scores(single.metrics["test"]))
        separate["exports"].append(str(single.export_path))
    out["separate"] = separate
    return out


def serving_cost(joint: str, separate: list[str], batch: int = 32, repeats: int = 5) -> dict:
    """Seconds per batch of JPEG test images: the joint export against the three exports in turn."""
    files = sorted((CIFAR / "test" / "cat").iterdir())[:batch]
    images = tf.constant([f.read_bytes() for f in files])
    fns = {"joint": [tf.saved_model.load(joint).signatures["serving_default"]],
           "separate": [tf.saved_model.load(p).signatures["serving_default"] for p in separate]}
    for group in fns.values():  # warm up (tracing, thread pools)
        for fn in group:
            fn(image_bytes=images)
    timings = interleaved({name: (lambda g=group: [fn(image_bytes=images) for fn in g])
                           for name, group in fns.items()}, repeats)
    return {"batch": batch, "seconds": {k: spread(v) for k, v in timings.runs.items()},
            "separate_over_joint": timings.ratio("separate", "joint")}


def run(workdir: Path, seeds: tuple[int, ...] = (1, 2), epochs: tuple[int, int] = (5, 3)) -> dict | None:
    if not CIFAR.is_dir():
        return None
    source = manifest(workdir)
    by_seed = {str(seed): train(workdir, source, seed, epochs) for seed in seeds}
    last = by_seed[str(seeds[-1])]
    return {"size": SIZE, "epochs": list(epochs), "tasks": list(TASKS), "attributes": ATTRIBUTES,
            "train_images": 3000, "test_images": 1000, "by_seed": by_seed,
            "serving": serving_cost(last["joint"]["export"], last["separate"]["exports"])}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_multitask")
    parser.add_argument("--out", help="also write the result JSON here (for benchmarks.run --adopt)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
