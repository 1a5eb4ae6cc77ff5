"""Transfer learning on real photos (../shared/datasets/cifar10_small, when present): the ImageNet
MobileNetV2-0.35 after phase 1 and after phase 2, against the same model trained from scratch with
the same epoch budget (--baseline scratch)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tf_transfer import config as config_lib
from tf_transfer.workflows import recipe

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10_small"
WEIGHTS = ROOT / "tf_transfer" / "assets" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"


def run(workdir: Path, train_per_class: int = 100, test_per_class: int = 100) -> dict | None:
    if not CIFAR.is_dir():
        return None
    rows = ["path,label,split"]
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for folder in sorted((CIFAR / split).iterdir()):
            rows.extend(f"{f},{folder.name},{split}" for f in sorted(folder.iterdir())[:n])
    manifest = workdir / "cifar.csv"
    manifest.write_text("\n".join(rows) + "\n")
    config = config_lib.Config().replace(**{
        "name": "cifar_bench", "runs_dir": str(workdir / "runs"), "data.source": f"csv:{manifest}",
        "data.image_size": 96, "data.val_fraction": 0.1, "model.weights": str(WEIGHTS),
        "phase1.epochs": 5, "phase2.epochs": 3, "phase2.unfreeze": "30", "phase1.patience": 0,
        "phase2.patience": 0, "export.enabled": False, "evaluation.baseline": "scratch", "evaluation.report": False})
    m = recipe.run(config).metrics
    return {"train_images": train_per_class * 10, "test_images": test_per_class * 10,
            "phase1": m["phase1"]["test"]["accuracy"], "phase2": m["test"]["accuracy"],
            "scratch": m["baseline_scratch"]["test"]["accuracy"],
            "phase2_macro_f1": m["test"]["macro_avg"]["f1"],
            "scratch_macro_f1": m["baseline_scratch"]["test"]["macro_avg"]["f1"]}


if __name__ == "__main__":
    import json

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
