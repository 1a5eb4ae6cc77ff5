"""What a run leaves after training: metrics per split, the report, and the verified export."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from tf_transfer import cli
from tf_transfer import config as config_lib
from tf_transfer.config import Config

log = logging.getLogger("tf_transfer.train")

FINAL_WEIGHTS = "final.weights.h5"


def evaluate_splits(model, datasets: dict, class_names: list[str], config: Config,
                     predictions: dict | None = None) -> dict:
    """Metrics per split from one prediction pass each; keeps (labels, probs) in `predictions`."""
    from tf_transfer import evaluate

    out = {}
    for split, ds in datasets.items():
        if ds is not None:
            labels, probs = evaluate.predict(model, ds)
            out[split] = evaluate.metrics(labels, probs, class_names, config.evaluation.top_k)
            if predictions is not None:
                predictions[split] = (labels, probs)
    return out


def log_metrics(metrics: dict) -> None:
    from tf_transfer import evaluate

    for split in ("val", "test"):
        if split in metrics:
            log.info("%s", evaluate.format_table(metrics[split], f"{split} split (final model):"))
    rows = [(label, metrics.get(key, {}).get("test") if key else metrics.get("test"))
            for label, key in (("phase 1 (frozen backbone)", "phase1"), ("final (fine-tuned)", None),
                               ("from scratch, same budget", "baseline_scratch"))]
    rows = [(label, m) for label, m in rows if m]
    if len(rows) > 1:
        log.info("Test accuracy: %s", "; ".join(f"{label} {m['accuracy']:.4f}" for label, m in rows))


def write_report(config: Config, run_dir: Path, images, metrics: dict, history: list[dict], boundary: int,
                  dataset, predictions: dict, export_path) -> None:
    from tf_transfer import evaluate, report

    split = "test" if "test" in predictions else "val"
    if split not in predictions:
        return
    labels, probs = predictions[split]
    (run_dir / "metrics.txt").write_text("\n\n".join(evaluate.format_table(metrics[s], f"{s}:")
                                                     for s in ("val", "test") if s in metrics) + "\n")
    plot_paths = report.write_plots(run_dir, images.class_names, metrics[split], dataset, labels, probs,
                                    history=history, boundary=boundary, counts=images.counts())
    path = report.write_report(
        run_dir, f"tf_transfer run {config.name}: {run_dir.name}", split, metrics[split], plot_paths,
        config=config.to_dict(), data_summary={"source": images.source, "counts": images.counts()},
        skipped=images.skipped, all_metrics=metrics, export_path=str(export_path) if export_path else None)
    log.info("Report: %s", path)


def export_model(config: Config, run_dir: Path, model, images, metrics: dict, image_size: int, preprocess: str) -> Path:
    """Export the trained model, record where, and verify the export in a fresh process."""
    from tf_transfer import data, export

    samples = sample_bytes(images, "test" if images.splits["test"] else "train")
    variants = [v for v in config.export.tflite.split(",") if v]
    representative = []
    if "int8" in variants:  # calibration images for full-integer quantization, from the training split
        plain = replace(config.data, augment=False, cache="none")
        ds = data.pipeline(images, "train", plain, image_size, config.seed, batch_size=1)
        representative = [x.numpy() for x, _ in ds.take(100)]
    path = export.export_classifier(
        model, images.class_names, image_size, config.export.export_dir, config.name,
        config={**config.to_dict(), "resolved": {"image_size": image_size, "preprocess": preprocess}},
        metrics=metrics, samples=samples, top_k=config.export.top_k,
        max_image_pixels=config.export.max_image_pixels, tflite=variants, representative=representative)
    (run_dir / "export_path.txt").write_text(f"{path}\n")
    if config.export.verify:
        result = export.verify_in_subprocess(path)
        log.info("Export verified in a fresh process: %d sample images, same top-1, max score diff %.2g",
                 result["samples"], result["max_score_diff"])
    log.info("SavedModel: %s", path)
    commands = export.serving_commands(path)
    log.info("Serve it with TF Serving:\n  %s\n  %s\nor locally for development:\n  %s",
             commands["docker"], commands["tensorflow_model_server"], commands["local_dev_server"])
    return path


def sample_bytes(images, split: str, count: int = 8) -> list[bytes]:
    """Encoded bytes of a few images of a split (for export verification)."""
    from tf_transfer import data

    ds = data.encoded_images(images, images.splits[split][:count])
    return [b for b, _ in ds.as_numpy_iterator()]


def rebuild(config: Config, num_classes: int, image_size: int, weights: Path):
    """The classifier of `config`, outside any distribution strategy, with the given weights."""
    from tf_transfer import backbones
    from tf_transfer import model as model_lib

    # The weights file replaces whatever the backbone starts with, so skip any download.
    bb = backbones.build(config.model.backbone, "none", image_size, config.model.cut_layer, config.model.preprocess)
    model = model_lib.build_classifier(bb, num_classes, config.model, train_bn=config.phase2.train_bn)
    model.load_weights(str(weights))
    return model


def export_from_run(config: Config, run_dir: Path) -> Path:
    """Rebuild a finished run's model from its final weights and export it as a new version."""
    from tf_transfer import backbones, data

    handler = cli.setup_logging(run_dir / "run.log")
    try:
        weights = run_dir / "checkpoints" / FINAL_WEIGHTS
        if not weights.is_file():
            raise config_lib.ConfigError(f"{run_dir} has no {weights.name}; expected a finished run folder")
        images = data.load_manifest(run_dir)
        image_size = config.data.image_size or backbones.default_image_size(config.model.backbone)
        model = rebuild(config, images.num_classes, image_size, weights)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return export_model(config, run_dir, model, images, metrics, image_size, model.get_layer("preprocess").mode)
    finally:
        logging.getLogger("tf_transfer").removeHandler(handler)
        handler.close()
