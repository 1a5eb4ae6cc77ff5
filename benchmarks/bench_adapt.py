"""What domain adaptation buys a text classifier: MiniLM adapted by masked-language modelling on the
training tweets of ../shared/datasets/emotion (labels dropped), then fine-tuned, against MiniLM fine-tuned
as it comes, at the same fine-tuning budget (tf_transfer's text defaults), with few and with all labels.

- one adaptation: ``pretrain --method mlm`` on the 16,000 training texts; its cost and its held-out
  masked-token accuracy and perplexity before and after;
- for each label count (a seeded, stratified subset of the training split; validation and test are the
  given splits, whole) and each seed: fine-tuned from the checkpoint and from the adapted checkpoint (the
  adapted encoder's ``hf_checkpoint/``, so both load through the same code), the frozen encoder (each
  run's phase 1) and TF-IDF + logistic regression on the same labelled texts.

    python -m benchmarks.bench_adapt [--labels 250,1000,0] [--seeds 0,1] [--mlm-epochs 2] [--limit N] [--out F]

0 labels means all of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import bench_text
from tf_transfer.folders import RunDir
from tf_transfer.workflows import pretraining, recipe

MLM = {"phase2.epochs": 2, "phase2.learning_rate": 1e-4, "data.batch_size": 32, "data.val_fraction": 0.05}


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict], fields=("text", "label", "split")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def subset(source: Path, labels: int, seed: int, workdir: Path) -> Path:
    """`labels` training rows (stratified by class, seeded; 0: all) with the whole val and test splits."""
    rows = _rows(source)
    train = [r for r in rows if r["split"] == "train"]
    if labels and labels < len(train):
        rng = np.random.default_rng(seed)
        by_class: dict[str, list[dict]] = {}
        for r in train:
            by_class.setdefault(r["label"], []).append(r)
        picked = []
        for members in by_class.values():  # each class in proportion, at least two
            n = max(2, round(labels * len(members) / len(train)))
            picked += [members[i] for i in rng.permutation(len(members))[:n]]
        train = picked
    return _write(workdir / f"labels{labels}-seed{seed}.csv", train + [r for r in rows if r["split"] != "train"])


def adapt(source: Path, workdir: Path, epochs: int) -> dict:
    """MLM on the training texts (labels dropped): the adapted checkpoint folder and what it cost."""
    corpus = _write(workdir / "unlabelled.csv", [r for r in _rows(source) if r["split"] == "train"], ("text",))
    config = bench_text._config(workdir, corpus, "adapt", **{**MLM, "phase2.epochs": epochs})
    started = time.monotonic()
    pretraining.pretrain(config, "mlm", str(workdir / "published" / "adapted"), overwrite=True)
    run = RunDir.latest(config.runs_dir, "adapt")
    metrics = run.read_json(RunDir.METRICS)["mlm"]
    return {"checkpoint": str(run.path / RunDir.HF_CHECKPOINT), "minutes": (time.monotonic() - started) / 60,
            "epochs": epochs, "before": metrics["before"], "after": metrics["after"],
            "train_texts": metrics["train_texts"], "val_texts": metrics["val_texts"],
            "epoch_seconds": [e["seconds"] for e in run.epochs()]}


def fine_tune(source: Path, workdir: Path, name: str, seed: int, backbone: str) -> dict:
    config = recipe.with_modality_defaults(bench_text._config(workdir, source, name, **{
        "seed": seed, "model.backbone": backbone, "export.enabled": False}))
    started = time.monotonic()
    result = recipe.run(config)
    m = result.metrics
    return {"test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_avg"]["f1"],
            "frozen_test_accuracy": m["phase1"]["test"]["accuracy"], "minutes": (time.monotonic() - started) / 60}


def run(workdir: Path, labels=(250, 1000, 0), seeds=(0, 1), mlm_epochs: int = 2, limit: int = 0) -> dict | None:
    if not (bench_text.EMOTION.is_dir() and bench_text.MINILM.is_dir()):
        return None
    source = bench_text.manifest(workdir, limit)
    out = {"adaptation": adapt(source, workdir, mlm_epochs), "runs": [], "mlm_recipe": MLM,
           "data": {split: sum(r["split"] == split for r in _rows(source)) for split in ("train", "val", "test")}}
    adapted = f"hf:{out['adaptation']['checkpoint']}"
    for n in labels:
        for seed in seeds:
            data = subset(source, n, seed, workdir)
            row = {"labels": n or sum(r["split"] == "train" for r in _rows(source)), "seed": seed,
                   "tfidf": bench_text.tfidf_baseline(data)}
            row["base"] = fine_tune(data, workdir, f"base-{n}-{seed}", seed, f"hf:{bench_text.MINILM}")
            row["adapted"] = fine_tune(data, workdir, f"adapted-{n}-{seed}", seed, adapted)
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_adapt")
    parser.add_argument("--labels", default="250,1000,0", help="comma list of label counts (0: all)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--mlm-epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="rows per split (a quick check of the script)")
    parser.add_argument("--out", help="also write the result JSON here (for benchmarks.run --adopt)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), tuple(int(n) for n in args.labels.split(",")),
                     tuple(int(s) for s in args.seeds.split(",")), args.mlm_epochs, args.limit)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")

