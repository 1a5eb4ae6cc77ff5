"""Text classification on real tweets (../shared/datasets/emotion, six emotions, 16,000 / 2,000 / 2,000)
with the real MiniLM sentence encoder (../shared/weights/all-MiniLM-L6-v2), all in one run:

- TF-IDF (unigrams and bigrams) + logistic regression, trained here as the baseline;
- frozen MiniLM + head: phase 1 alone, on cached embeddings;
- fine-tuned MiniLM: tf_transfer's text defaults (phase 1, then every layer with AdamW and warm-up);
- the same architecture from random initialisation, fine-tuned with the same recipe and epochs;
- serving throughput of the exported string signature (in process, and through the local REST server).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import spread
from tf_transfer import config as config_lib
from tf_transfer import serving
from tf_transfer.folders import RunDir
from tf_transfer.serving import server as serve
from tf_transfer.workflows import recipe

ROOT = Path(__file__).resolve().parents[1]
EMOTION = ROOT.parent / "shared" / "datasets" / "emotion"
MINILM = ROOT.parent / "shared" / "weights" / "all-MiniLM-L6-v2"


def manifest(workdir: Path, limit: int = 0) -> Path:
    """The three given files as one CSV with a split column (the given splits are kept; `limit` rows of
    each for a quick check of the script)."""
    rows = [["text", "label", "split"]]
    for split, name in (("train", "train.csv"), ("val", "val.csv"), ("test", "test.csv")):
        with (EMOTION / name).open(newline="", encoding="utf-8") as f:
            found = [[r["text"], r["label"], split] for r in csv.DictReader(f)]
            rows += found[:limit] if limit else found
    path = workdir / "emotion.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def _split(path: Path, split: str) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def tfidf_baseline(path: Path) -> dict:
    """TF-IDF over unigrams and bigrams + softmax regression (L2): the run's --baseline tfidf
    (tf_transfer.models.tfidf), early stopped on the validation accuracy."""
    from tf_transfer.models import tfidf

    started = time.monotonic()
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (_split(path, s) for s in ("train", "val", "test"))
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    model = tfidf.train(x_train, [index[c] for c in y_train], (x_val, [index[c] for c in y_val]), len(classes))
    pred = tfidf.probabilities(model, x_test).argmax(-1)
    labels = np.array([index[c] for c in y_test])
    return {"test_accuracy": float((pred == labels).mean()), "test_macro_f1": _macro_f1(labels, pred, len(classes)),
            "seconds": time.monotonic() - started}


def _macro_f1(y: np.ndarray, pred: np.ndarray, n: int) -> float:
    f1 = []
    for c in range(n):
        tp, fp, fn = np.sum((pred == c) & (y == c)), np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        f1.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.mean(f1))


def _config(workdir: Path, source: Path, name: str, **changes) -> config_lib.Config:
    return config_lib.Config().replace(**{
        "name": name, "runs_dir": str(workdir / "runs"), "data.source": f"csv:{source}",
        "model.backbone": f"hf:{MINILM}", "model.max_seq_length": 64, "export.export_dir": str(workdir / "exports"),
        "evaluation.report": False, **changes})


def _train(config: config_lib.Config) -> dict:
    started = time.monotonic()
    result = recipe.run(config)
    seconds = time.monotonic() - started
    epochs = RunDir(result.run_dir).epochs()
    by_phase = {p: [e["seconds"] for e in epochs if e["phase"] == p] for p in (1, 2)}
    return {"test_accuracy": result.metrics["test"]["accuracy"],
            "test_macro_f1": result.metrics["test"]["macro_avg"]["f1"],
            "val_accuracy": result.metrics["val"]["accuracy"], "seconds": seconds,
            "epoch_seconds": {str(p): statistics.median(v) for p, v in by_phase.items() if v},
            "epochs": {str(p): len(v) for p, v in by_phase.items()},
            "export": str(result.export_path) if result.export_path else None}


def _rates(model, sample: list[str], repeats: int) -> list[float]:
    """Texts per second of `model.predict_texts(sample)`, after one warm-up call."""
    model.predict_texts(sample)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_texts(sample)
        out.append(len(sample) / (time.perf_counter() - start))
    return out


def serving_throughput(export: str, texts: list[str], batch: int = 32, repeats: int = 5) -> dict:
    """Texts per second through the string signature: in process, and through the local REST server."""
    sample = texts[:batch]
    in_process = _rates(serving.LocalModel(export), sample, repeats)
    server = serve.LocalServer([Path(export).parent], port=0, grpc_port=None).start()
    try:
        client = serving.RestClient(f"http://127.0.0.1:{server.port}", Path(export).parent.name, timeout=120)
        rest = _rates(client, sample, repeats)
    finally:
        server.stop()
    return {"batch": batch, "in_process_texts_per_s": spread(in_process), "rest_texts_per_s": spread(rest)}


def run(workdir: Path, limit: int = 0) -> dict | None:
    if not (EMOTION.is_dir() and MINILM.is_dir()):
        return None
    source = manifest(workdir, limit)
    out = {"tfidf_logreg": tfidf_baseline(source)}
    # phase 1 alone: the head on frozen (cached) MiniLM embeddings
    out["frozen_minilm"] = _train(_config(workdir, source, "frozen", **{"phase2.epochs": 0, "export.enabled": False}))
    defaults = recipe.with_modality_defaults(_config(workdir, source, "finetuned"))
    out["finetuned_minilm"] = _train(defaults)
    out["random_init"] = _train(defaults.replace(**{
        "name": "random", "model.weights": "none", "phase1.epochs": 0, "phase2.learning_rate": 3e-4,
        "export.enabled": False}))
    texts, _ = _split(source, "test")
    out["serving"] = serving_throughput(out["finetuned_minilm"]["export"], texts)
    p2 = defaults.phase2
    out["recipe"] = {"phase1_epochs": defaults.phase1.epochs, "phase2_epochs": p2.epochs, "unfreeze": p2.unfreeze,
                     "learning_rate": p2.learning_rate, "weight_decay": p2.weight_decay, "warmup": p2.warmup,
                     "batch_size": defaults.data.batch_size, "max_seq_length": 64, "random_init_learning_rate": 3e-4}
    out["data"] = {split: len(_split(source, split)[0]) for split in ("train", "val", "test")}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_text")
    parser.add_argument("--out", help="also write the result JSON here (for benchmarks.run --adopt)")
    parser.add_argument("--limit", type=int, default=0, help="rows per split (a quick check of the script)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), args.limit)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
