"""Pre-train your own backbone, publish it, transfer from it (../shared/datasets/cifar10_small).

Source: the vehicle classes with their labels (supervised) and every training image without labels
(rotation prediction), each from random initialisation, MobileNetV2-0.35 at 64x64 (CIFAR's 32x32
upscaled), then published. Target: the six animal classes with a few labels per class, tested on
their 600 test images; the published backbones against random initialisation and the bundled ImageNet
weights, with the same target data and epoch budget, over several seeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tf_transfer import config as config_lib
from tf_transfer.folders import RunDir
from tf_transfer.workflows import pretraining, recipe

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10_small"
WEIGHTS = ROOT / "tf_transfer" / "assets" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
VEHICLES = ("airplane", "automobile", "ship", "truck")
ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
SIZE = 64


def _base(workdir: Path, name: str, source: str, **changes) -> config_lib.Config:
    return config_lib.Config().replace(**{
        "name": name, "runs_dir": str(workdir / "runs"), "data.source": source, "data.image_size": SIZE,
        "data.val_fraction": 0.1, "phase1.patience": 0, "phase2.patience": 0, "export.enabled": False,
        "evaluation.report": False, **changes})


def _csv(path: Path, rows: list[tuple[Path, str, str]]) -> str:
    path.write_text("path,label,split\n" + "".join(f"{f},{label},{split}\n" for f, label, split in rows))
    return f"csv:{path}"


def pretrain_backbones(workdir: Path, epochs: int) -> dict:
    """Publish the supervised (vehicles) and the rotation (all images, no labels) backbones."""
    vehicles = [(f, c, "train") for c in VEHICLES for f in sorted((CIFAR / "train" / c).iterdir())]
    sources = {"supervised": _csv(workdir / "vehicles.csv", vehicles), "rotation": str(CIFAR / "train")}
    out = {}
    for method, source in sources.items():
        started = time.monotonic()
        config = _base(workdir, f"pretrain_{method}", source, **{
            "model.weights": "none", "phase1.epochs": 0, "phase2.epochs": epochs})
        path = pretraining.pretrain(config, method, str(workdir / f"published_{method}"))
        run = sorted((workdir / "runs" / f"pretrain_{method}").iterdir())[-1]
        metrics = RunDir(run).read_json(RunDir.METRICS, {})
        out[method] = {"path": str(path), "seconds": time.monotonic() - started,
                       "source_test_accuracy": metrics.get("test", metrics.get("val", {})).get("accuracy"),
                       "images": len(vehicles) if method == "supervised" else 10 * 300}
    return out


def target_source(workdir: Path, per_class: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    rows = []
    for c in ANIMALS:
        train = sorted((CIFAR / "train" / c).iterdir())
        rows += [(train[i], c, "train") for i in sorted(rng.choice(len(train), per_class, replace=False))]
        rows += [(f, c, "test") for f in sorted((CIFAR / "test" / c).iterdir())]
    return _csv(workdir / f"animals_{seed}.csv", rows)


def transfer(workdir: Path, backbones: dict, per_class: int, seed: int, epochs: tuple[int, int]) -> dict:
    """Test accuracy of each starting point on the few-label animal set (one seed)."""
    source = target_source(workdir, per_class, seed)
    starts = {"random initialisation": {"model.weights": "none"},
              "ImageNet weights": {"model.weights": str(WEIGHTS)},
              "published, supervised on vehicles": {"model.backbone": f"hub:{backbones['supervised']['path']}"},
              "published, rotation prediction (no labels)": {"model.backbone": f"hub:{backbones['rotation']['path']}"}}
    out = {}
    for label, changes in starts.items():
        config = _base(workdir, f"target_{seed}", source, seed=seed, **{
            "phase1.epochs": epochs[0], "phase2.epochs": epochs[1], **changes})
        if changes.get("model.weights") == "none":  # scratch: every layer trains for the whole budget
            config = recipe.scratch_config(config).replace(**{"evaluation.report": False})
        started = time.monotonic()
        m = recipe.run(config).metrics
        out[label] = {"test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_avg"]["f1"],
                      "seconds": time.monotonic() - started}
    return out


def run(workdir: Path, per_class: int = 20, seeds: tuple[int, ...] = (1, 2), pretrain_epochs: int = 24,
        epochs: tuple[int, int] = (5, 5)) -> dict | None:
    if not CIFAR.is_dir():
        return None
    backbones = pretrain_backbones(workdir, pretrain_epochs)
    results = {str(seed): transfer(workdir, backbones, per_class, seed, epochs) for seed in seeds}
    return {"size": SIZE, "per_class": per_class, "classes": list(ANIMALS), "test_images": 600,
            "pretrain_epochs": pretrain_epochs, "target_epochs": list(epochs), "pretrained": backbones,
            "by_seed": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pretrain")
    parser.add_argument("--out", help="also write the result JSON here (for benchmarks.run --adopt)")
    parser.add_argument("--pretrain-epochs", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), pretrain_epochs=args.pretrain_epochs)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
