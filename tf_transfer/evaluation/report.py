"""Reports: plots saved as PNG and one self-contained report.html (images embedded, no network)."""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from pathlib import Path

import numpy as np

from tf_transfer.evaluation import chance, plots
from tf_transfer.evaluation.metrics import EPS, format_any
from tf_transfer.folders import RunDir

log = logging.getLogger(__name__)
GRID = 12  # images per sample / worst-mistakes grid


def gather_images(dataset, indices: list[int]) -> np.ndarray:
    """uint8 images at the given positions of a non-shuffled, batched (x, y) dataset (a second pass)."""
    import tensorflow as tf

    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return np.zeros((0, 1, 1, 3), np.uint8)
    table = tf.constant(wanted, tf.int64)
    ds = dataset.unbatch().enumerate().filter(lambda i, xy: tf.reduce_any(tf.equal(table, i)))
    found = {int(i): np.clip(xy[0].numpy(), 0, 255).astype(np.uint8) for i, xy in ds.take(len(wanted))}
    return np.stack([found[int(i)] for i in indices])


def sample_indices(labels: np.ndarray, count: int = GRID) -> list[int]:
    """Examples drawn across classes in turn (the first of each class, then the second, ...)."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    for rank in range(max((len(b) for b in by_class), default=0)):
        picked.extend(int(b[rank]) for b in by_class if rank < len(b))
        if len(picked) >= count:
            break
    return picked[:count]


def worst_indices(labels: np.ndarray, probs: np.ndarray, count: int = GRID) -> list[int]:
    """The examples with the highest loss (misclassified first, as they have the highest loss)."""
    loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, 1.0))
    return [int(i) for i in np.argsort(-loss)[:count]]


def write_plots(run: RunDir, class_names: list[str], m: dict, dataset, labels: np.ndarray, probs: np.ndarray,
                history: list[dict] | None = None, stages: list[dict] | None = None,
                counts: dict | None = None) -> dict[str, Path]:
    """Save every plot of a run or evaluation as PNG in its plots folder; returns {name: path}."""
    figures = {
        "confusion_matrix": plots.confusion(m["confusion_matrix"], class_names),
        "per_class_f1": plots.per_class_f1(m),
    }
    if history:
        figures["curves"] = plots.history_curves(history, stages=stages or [])
    if counts:
        figures["class_distribution"] = plots.class_distribution(counts)
    if len(labels) and dataset.element_spec[0].dtype.name == "string":  # texts: a table in the report instead
        return {name: plots.save(fig, run.plots_dir / f"{name}.png") for name, fig in figures.items()}
    if len(labels):
        sample = sample_indices(labels)
        figures["samples"] = plots.predictions_grid(gather_images(dataset, sample), labels[sample], probs[sample],
                                                    class_names, "sample predictions")
        worst = worst_indices(labels, probs)
        figures["worst_mistakes"] = plots.predictions_grid(gather_images(dataset, worst), labels[worst],
                                                           probs[worst], class_names, "highest-loss examples")
    return {name: plots.save(fig, run.plots_dir / f"{name}.png") for name, fig in figures.items()}


def write_task_plots(run: RunDir, tasks, m: dict, history: list[dict] | None = None,
                     stages: list[dict] | None = None, counts: dict | None = None) -> dict[str, Path]:
    """The plots of a run with several heads: per task its per-class F1, its confusion matrix
    (single-label tasks) and class distribution; the training curves once. `tasks` are
    tf_transfer.tasks.Task; `m` a split's metrics with one entry per task; `counts` {task: counts}."""
    figures = {}
    if history:
        figures["curves"] = plots.history_curves(history, stages=stages or [])
    for t in tasks:
        tm = m["tasks"][t.name]
        figures[f"{t.name}_per_class_f1"] = plots.per_class_f1(tm, f"task {t.name}: per-class F1")
        if not t.multi_label:
            figures[f"{t.name}_confusion_matrix"] = plots.confusion(tm["confusion_matrix"], list(t.class_names))
        if counts and counts.get(t.name):
            figures[f"{t.name}_class_distribution"] = plots.class_distribution(counts[t.name])
    return {name: plots.save(fig, run.plots_dir / f"{name}.png") for name, fig in figures.items()}


def worst_texts(dataset, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                count: int = GRID) -> list[list]:
    """The highest-loss texts of a non-shuffled (texts, labels) dataset: [text, true, predicted, score]."""
    import tensorflow as tf

    worst = worst_indices(labels, probs, count)
    table = tf.constant(worst, tf.int64)
    ds = dataset.unbatch().enumerate().filter(lambda i, xy: tf.reduce_any(tf.equal(table, i)))
    found = {int(i): xy[0].numpy().decode("utf-8", "replace") for i, xy in ds.take(len(worst))}
    return [[found[i][:300], class_names[labels[i]], class_names[int(probs[i].argmax())], f"{probs[i].max():.3f}"]
            for i in worst]


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("–" if v is None else str(v))


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:12px}
img{max-width:100%;margin:.5em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
.warning{background:#fff3cd;border:2px solid #c98a00;padding:.6em 1em}"""


def render(title: str, sections: list[tuple[str, str]]) -> str:
    """A complete HTML page: no scripts, no external resources."""
    body = "".join(f'<section id="{html.escape(name.lower().replace(" ", "-"))}"><h2>{html.escape(name)}</h2>'
                   f"{content}</section>" for name, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{time.strftime('%Y-%m-%d %H:%M')}</p>{body}</body></html>")


def not_learnt_box(flags: list[dict]) -> str:
    """The warning at the top of a report: what the model did not learn, and how that was decided."""
    items = "".join(f"<li>{html.escape(chance.describe(f))}</li>" for f in flags)
    how = ("A single-label task is flagged when its accuracy is not above always answering its most frequent "
           "class (one-sided binomial test, p &ge; 0.05); a label of a multi-label task when its average "
           "precision is not above 95% of random rankings of the same examples.")
    return f'<div class="warning"><ul>{items}</ul><p>{how}</p></div>'


def stages_table(stages: list[dict]) -> str:
    """What each training stage unfroze, its epochs, its validation score, and whether it was kept."""
    rows = []
    for s in stages:
        kept = "" if "kept" not in s else ("kept" if s["kept"] else f"rolled back to {s['rolled_back_to']}")
        rows.append([s["name"], s.get("unfreeze") or "nothing (frozen)", f"{s['first_epoch']}-{s['last_epoch']}",
                     f"{s['metric']} {s['score']:.4f}" if "score" in s else "", kept])
    note = ("<p>A stage that does not beat the best weights so far on the monitored metric is rolled back to "
            "them, so fine-tuning never leaves the model worse on validation.</p>")
    return note + _table(["stage", "unfrozen", "epochs", "validation", "result"], rows)


def _tta_note(metrics: dict) -> str:
    tta = metrics.get("tta")
    if not tta:
        return ""
    parts = [f"{split} accuracy {metrics[split]['accuracy']:.4f} -> {tta[split]['accuracy']:.4f} "
             f"({tta[split]['accuracy'] - metrics[split]['accuracy']:+.4f})" for split in ("val", "test")
             if split in tta and split in metrics]
    return f"<p>Test-time augmentation (horizontal flip averaging): {html.escape('; '.join(parts))}.</p>"


def comparison_rows(metrics: dict) -> list[list]:
    rows = []
    for label, key in (("phase 1 (frozen backbone)", "phase1"), ("final (after fine-tuning)", None),
                       ("from scratch, same budget", "baseline_scratch"),
                       ("TF-IDF + logistic regression", "baseline_tfidf")):
        m = metrics.get(key) if key else metrics
        if m and m.get("skipped"):
            rows.append([label, f"skipped: {m['skipped']}", "", ""])
        elif m and m.get("test"):
            rows.append([label, _fmt(m["test"]["accuracy"]), _fmt(m["test"].get("log_loss")),
                         _fmt(m.get("val", {}).get("accuracy") if m.get("val") else None)])
    return rows


def _data_section(summary: dict) -> str:
    """The class counts per split (per task with several heads)."""
    by_task = summary.get("task_counts") or {"": summary["counts"]}
    out = f"<p>source: {html.escape(str(summary.get('source')))}</p>"
    for name, counts in by_task.items():
        rows = [[cls, c.get("train", 0), c.get("val", 0), c.get("test", 0)] for cls, c in counts.items()]
        out += (f"<h3>task {html.escape(name)}</h3>" if name else "") + _table(["class", "train", "val", "test"], rows)
    return out


def write_report(run: RunDir, title: str, split: str, m: dict, plot_paths: dict[str, Path], *,
                 config: dict | None = None, data_summary: dict | None = None, skipped: dict | None = None,
                 all_metrics: dict | None = None, export_path: str | None = None,
                 stages: list[dict] | None = None, worst: list[list] | None = None) -> Path:
    """report.html with every section available; returns its path."""
    sections = []
    if all_metrics and all_metrics.get("not_learnt"):
        sections.append(("Not learnt", not_learnt_box(all_metrics["not_learnt"])))
    if all_metrics and all_metrics.get("too_few_to_tell"):
        items = "".join(f"<li>{html.escape(chance.describe(f))}</li>" for f in all_metrics["too_few_to_tell"])
        sections.append(("Too few examples to tell", f"<ul>{items}</ul>"))
    if all_metrics:
        sections.append(("Summary", _table(["model", f"{split} accuracy", f"{split} log loss", "val accuracy"],
                                           comparison_rows(all_metrics)) + _tta_note(all_metrics)))
    if stages:
        sections.append(("Stages", stages_table(stages)))
    for name, tm in (m["tasks"].items() if "tasks" in m else [("", m)]):
        heading = f"Metrics ({split}): task {name}" if name else f"Metrics ({split})"
        plots_of = "".join(_img(p) for key, p in plot_paths.items() if name and key.startswith(f"{name}_"))
        sections.append((heading, f"<pre>{html.escape(format_any(tm))}</pre>{plots_of}"))
    shown = [p for key, p in plot_paths.items() if "tasks" not in m or not any(
        key.startswith(f"{name}_") for name in m["tasks"])]
    sections.append(("Plots", "".join(_img(p) for p in shown)))
    if worst:
        sections.append(("Highest-loss examples", _table(["text", "true", "predicted", "score"], worst)))
    if data_summary:
        sections.append(("Data", _data_section(data_summary)))
    skipped = skipped or {}
    listing = "".join(f"<li>{html.escape(p)}: {html.escape(r)}</li>" for p, r in sorted(skipped.items())[:200])
    sections.append(("Skipped files", f"<p>{len(skipped)} file(s) skipped.</p><ul>{listing}</ul>"))
    if export_path:
        sections.append(("Export", f"<p>SavedModel: <code>{html.escape(str(export_path))}</code></p>"))
    if config:
        sections.append(("Config", f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>"))
    run.write_text(RunDir.REPORT, render(title, sections))
    return run.report_file
