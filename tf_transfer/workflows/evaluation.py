"""Evaluate an exported model on labelled data: metrics, plots and report.html in an output folder."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tf_transfer import folders
from tf_transfer.config import DataConfig
from tf_transfer.data import datasets, images, sources
from tf_transfer.errors import DataError, ExportError
from tf_transfer.evaluation import metrics as metrics_lib
from tf_transfer.evaluation import report
from tf_transfer.folders import ModelDir, RunDir

log = logging.getLogger(__name__)


def _examples(source: str, split: str, model_classes: list[str]) -> tuple[datasets.ImageData, sources.Catalog]:
    """The readable examples of `source` (one split or all), labelled in the model's class order."""
    catalog = sources.resolve(source)
    unknown = sorted(set(catalog.class_names) - set(model_classes))
    if unknown:
        raise DataError(f"classes {', '.join(unknown)} in {catalog.location} are not classes of the model "
                        f"(which knows {', '.join(model_classes)})")
    parts = [s for s in catalog.partitions if split == "all" or s == split]
    if not parts:
        raise DataError(f"{catalog.location} has no {split} split; it has {', '.join(catalog.partitions)}")
    examples = [e for s in parts for e in catalog.partitions[s]]
    skipped = dict(catalog.skipped)
    if catalog.kind != "tfds":
        skipped.update(images.find_unreadable([e.key for e in examples]))
    remap = {i: model_classes.index(name) for i, name in enumerate(catalog.class_names)}
    examples = [sources.Example(e.key, remap[e.label]) for e in examples if e.key not in skipped]
    if not examples:
        raise DataError(f"no readable images to evaluate in {catalog.location}")
    data = datasets.ImageData(model_classes, {"train": [], "val": [], "test": examples}, skipped, source,
                              catalog.kind, catalog.tfds)
    return data, catalog


def evaluate_export(export: str, source: str, split: str = "all", output: str | None = None,
                    batch_size: int = 32, tta: bool = False, text_columns: dict | None = None) -> RunDir:
    """Evaluate an exported model on labelled data matched by class name; returns the output folder
    (local, or a URL written through a local mirror like a run folder).
    With `tta`, scores are averaged with the horizontally flipped image's (and both are reported)."""
    import tensorflow as tf

    path = folders.resolve_export(export)
    if (path / ModelDir.TASKS).is_file():
        return evaluate_tasks(path, source, split, output, batch_size)
    if json.loads((path / ModelDir.CONFIG).read_text()).get("resolved", {}).get("input") == "text":
        return evaluate_texts(path, DataConfig(source=source, batch_size=batch_size, **(text_columns or {})),
                              split, output)
    labels_file = path / ModelDir.LABELS
    if not labels_file.is_file():
        raise ExportError(f"{path} has no {ModelDir.LABELS}; expected an export written by tf_transfer")
    model_classes = labels_file.read_text().splitlines()
    image_size = json.loads((path / ModelDir.CONFIG).read_text())["resolved"]["image_size"]
    data, _ = _examples(source, split, model_classes)
    ds = datasets.pipeline(data, "test", DataConfig(cache="none", augment=False, batch_size=batch_size),
                           image_size, 0)
    fn = tf.saved_model.load(str(path)).signatures["serving_pixels"]
    labels, probs = metrics_lib.predict(lambda x: fn(pixels=x)["scores"].numpy(), ds)
    m = metrics_lib.metrics(labels, probs, model_classes)
    if tta:
        m_tta = metrics_lib.metrics(*metrics_lib.predict(lambda x: fn(pixels=x)["scores"].numpy(), ds, tta=True),
                                    model_classes)
        log.info("Test-time augmentation: accuracy %.4f -> %.4f", m["accuracy"], m_tta["accuracy"])
        m["tta"] = {k: m_tta[k] for k in ("accuracy", "macro_avg", "log_loss")}
    out = _output(path, output)
    out.write_json(RunDir.METRICS, m)
    out.write_text(RunDir.METRICS_TEXT, metrics_lib.format_table(m, f"{path} on {source}") + "\n")
    log.info("%s", metrics_lib.format_table(
        m, f"{path} on {source} ({len(data.splits['test'])} images, {len(data.skipped)} skipped)"))
    plot_paths = report.write_plots(out, model_classes, m, ds, labels, probs)
    report.write_report(out, f"Evaluation of {path}", "eval", m, plot_paths, skipped=data.skipped,
                        data_summary={"source": source, "counts": {n: {"test": m["per_class"][n]["support"]}
                                                                   for n in model_classes}}, export_path=str(path))
    out.sync()
    return out


def _output(path, output: str | None) -> RunDir:
    out = RunDir(output or Path("runs") / "evaluations" /
                 f"{path.parent.name}-v{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.path.mkdir(parents=True, exist_ok=True)
    return out


def _task_examples(source: str, split: str, tasks: list) -> datasets.ImageData:
    """The readable examples of a manifest with a label column per task of the model, targets in the
    model's class order (an empty cell: not scored for that task)."""
    catalog = sources.resolve(source, tasks=",".join(t.name for t in tasks))
    remaps = []
    for ours, theirs in zip(tasks, catalog.tasks, strict=True):
        unknown = sorted(set(theirs.class_names) - set(ours.class_names))
        if unknown:
            raise DataError(f"{catalog.location}: labels {', '.join(unknown)} of column {ours.name!r} are not classes "
                            f"of the model's task (which knows {', '.join(ours.class_names)})")
        remaps.append([ours.class_names.index(name) for name in theirs.class_names])
    parts = [s for s in catalog.partitions if split == "all" or s == split]
    if not parts:
        raise DataError(f"{catalog.location} has no {split} split; it has {', '.join(catalog.partitions)}")
    examples = [e for s in parts for e in catalog.partitions[s]]
    skipped = {**catalog.skipped, **images.find_unreadable([e.key for e in examples])}
    examples = [sources.Example(e.key, -1, targets=tuple(None if t is None else tuple(remap[i] for i in t)
                                                         for t, remap in zip(e.targets, remaps, strict=True)))
                for e in examples if e.key not in skipped]
    if not examples:
        raise DataError(f"no readable images to evaluate in {catalog.location}")
    return datasets.ImageData(list(tasks[0].class_names), {"train": [], "val": [], "test": examples}, skipped,
                              source, catalog.kind, named_tasks=list(tasks))


def evaluate_tasks(path, source: str, split: str = "all", output: str | None = None, batch_size: int = 32) -> RunDir:
    """Evaluate an export with several heads on a CSV manifest with a column per task, at the export's
    multi-label thresholds; metrics, report and plots per task."""
    import tensorflow as tf

    from tf_transfer.serving import savedmodel

    tasks = savedmodel.export_tasks(path)
    thresholds = {t["name"]: t["thresholds"] for t in json.loads((path / ModelDir.TASKS).read_text())["tasks"]
                  if t.get("multi_label")}
    image_size = json.loads((path / ModelDir.CONFIG).read_text())["resolved"]["image_size"]
    data = _task_examples(source, split, tasks)
    ds = datasets.pipeline(data, "test", DataConfig(cache="none", augment=False, batch_size=batch_size),
                           image_size, 0)
    fn = tf.saved_model.load(str(path)).signatures["serving_pixels"]

    def heads(x):
        out = fn(pixels=x)
        return {t.head: out[t.prefix + ("all_scores" if t.multi_label else "scores")].numpy() for t in tasks}

    m = metrics_lib.task_metrics(metrics_lib.predict_heads(heads, ds), tasks, thresholds=thresholds)
    out = _output(path, output)
    out.write_json(RunDir.METRICS, m)
    title = f"{path} on {source} ({len(data.splits['test'])} images, {len(data.skipped)} skipped)"
    out.write_text(RunDir.METRICS_TEXT, metrics_lib.format_any(m, title) + "\n")
    log.info("%s", metrics_lib.format_any(m, title))
    counts = {t.name: data.counts(i) for i, t in enumerate(tasks)}
    plot_paths = report.write_task_plots(out, tasks, m, counts=counts)
    report.write_report(out, f"Evaluation of {path}", "eval", m, plot_paths, skipped=data.skipped,
                        data_summary={"source": source, "counts": {}, "task_counts": counts}, export_path=str(path))
    out.sync()
    return out


def evaluate_texts(path, cfg: DataConfig, split: str = "all", output: str | None = None) -> RunDir:
    """Evaluate a text export on labelled texts (a CSV with text and label columns, a .txt folder, TFDS),
    labels matched to the model's classes by name."""
    import tensorflow as tf

    from tf_transfer.data import texts
    from tf_transfer.serving import savedmodel

    model_classes = (path / ModelDir.LABELS).read_text().splitlines()
    rows, _, skipped = texts.read(cfg)
    rows = [r for r in rows if split == "all" or r[0] == split]
    unknown = sorted({label for _, _, label in rows} - set(model_classes))
    if unknown:
        raise DataError(f"labels {', '.join(unknown)} in {cfg.source} are not classes of the model (which knows "
                        f"{', '.join(model_classes)})")
    if not rows:
        raise DataError(f"no texts to evaluate in {cfg.source} (split {split})")
    examples = [sources.Example(text, model_classes.index(label)) for _, text, label in rows]
    data = datasets.ImageData(model_classes, {"train": [], "val": [], "test": examples}, skipped, cfg.source,
                              texts.KIND)
    ds = texts.pipeline(data, "test", cfg, 0)
    fn = savedmodel.load(path).signatures["serving_default"]
    labels, probs = metrics_lib.predict(lambda x: fn(text=tf.constant(x))["scores"].numpy(), ds)
    m = metrics_lib.metrics(labels, probs, model_classes)
    out = _output(path, output)
    out.write_json(RunDir.METRICS, m)
    title = f"{path} on {cfg.source} ({len(examples)} texts, {len(skipped)} skipped)"
    out.write_text(RunDir.METRICS_TEXT, metrics_lib.format_table(m, title) + "\n")
    log.info("%s", metrics_lib.format_table(m, title))
    plot_paths = report.write_plots(out, model_classes, m, ds, labels, probs)
    report.write_report(out, f"Evaluation of {path}", "eval", m, plot_paths, skipped=skipped,
                        data_summary={"source": cfg.source, "counts": {n: {"test": m["per_class"][n]["support"]}
                                                                       for n in model_classes}},
                        export_path=str(path), worst=report.worst_texts(ds, labels, probs, model_classes))
    out.sync()
    return out
