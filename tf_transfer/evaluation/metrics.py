"""Classification metrics from one prediction pass over a non-shuffled dataset: accuracy, top-k,
per-class precision/recall/F1, averages, confusion matrix, log loss, calibration, and a readable table."""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def predict(model, dataset, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, probabilities) from a single pass, so that the two always line up.

    `model` is a Keras model or any callable taking a float pixel batch and returning probabilities.
    With `tta`, each image's probabilities are averaged with those of its horizontal flip.
    """
    labels, probs = [], []
    for x, y in dataset:
        out = _call(model, x)
        if tta:
            out = (out + _call(model, x[:, :, ::-1, :])) / 2.0
        probs.append(out)
        labels.append(np.argmax(y.numpy(), axis=-1))
    if not labels:
        return np.zeros((0,), int), np.zeros((0, 0), np.float32)
    return np.concatenate(labels), np.concatenate(probs)


def _call(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False) if hasattr(model, "trainable_weights") else model(x))


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, pred), 1)
    return counts


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Sum over equal-width confidence bins of |accuracy - confidence| weighted by the bin's share."""
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str], top_k: int = 5) -> dict:
    """Accuracy, top-k, per-class precision/recall/F1/support, macro and weighted averages, confusion
    matrix, log loss, most-confused pairs and expected calibration error."""
    n, c = len(labels), len(class_names)
    pred = probs.argmax(axis=-1) if n else np.zeros((0,), int)
    k = max(1, min(top_k, c))
    cm = confusion_matrix(labels, pred, c)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(c), where=(precision + recall) > 0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i]), "correct": int(tp[i]), "accuracy": float(recall[i]) if support[i] else None}
        for i, name in enumerate(class_names)
    }
    weights = support / max(n, 1)
    top = np.argsort(-probs, axis=-1)[:, :k] if n else np.zeros((0, k), int)
    pairs = [(int(cm[t, p]), class_names[t], class_names[p]) for t in range(c) for p in range(c) if t != p and cm[t, p]]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    log_loss = float(-np.mean(np.log(np.clip(probs[np.arange(n), labels], EPS, 1.0)))) if n else None
    return {
        "num_examples": int(n),
        "accuracy": float((pred == labels).mean()) if n else None,
        f"top_{k}_accuracy": float(np.mean([labels[i] in top[i] for i in range(n)])) if n else None,
        "loss": log_loss,
        "log_loss": log_loss,
        "expected_calibration_error": expected_calibration_error(labels, probs) if n else None,
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted_avg": {"precision": float(weights @ precision), "recall": float(weights @ recall),
                         "f1": float(weights @ f1)},
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "most_confused": [{"true": t, "predicted": p, "count": cnt} for cnt, t, p in pairs[:10]],
    }


def evaluate(model, dataset, class_names: list[str], top_k: int = 5) -> dict:
    labels, probs = predict(model, dataset)
    return metrics(labels, probs, class_names, top_k)


def format_table(m: dict, title: str = "") -> str:
    """A readable classification report (like scikit-learn's) with the summary metrics."""
    names = list(m["per_class"])
    width = max(12, *(len(n) for n in names))
    lines = [title] if title else []
    lines.append(f"{'':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}")
    for name in names:
        r = m["per_class"][name]
        lines.append(f"{name:<{width}} {r['precision']:9.3f} {r['recall']:9.3f} {r['f1']:9.3f} {r['support']:9d}")
    for avg in ("macro_avg", "weighted_avg"):
        r = m[avg]
        lines.append(f"{avg.replace('_', ' '):<{width}} {r['precision']:9.3f} {r['recall']:9.3f} {r['f1']:9.3f} "
                     f"{m['num_examples']:9d}")
    topk = next(key for key in m if key.startswith("top_") and key.endswith("_accuracy"))
    lines.append(f"accuracy {m['accuracy']:.4f}   {topk.replace('_', ' ')} {m[topk]:.4f}   "
                 f"log loss {m['log_loss']:.4f}   ECE {m['expected_calibration_error']:.4f}")
    if m["most_confused"]:
        lines.append("most confused: " + ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})"
                                                   for p in m["most_confused"][:5]))
    return "\n".join(lines)


# --- several heads: per-task metrics, multi-label metrics and decision thresholds


def predict_heads(model, dataset, tta: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{head: (targets [N, C], labelled mask [N], probabilities [N, C])} from one pass over batches of
    (pixels, {head: targets}, {head: loss weights}) (a model with several heads)."""
    parts: dict[str, list] = {}
    for x, ys, ws in dataset:
        out = _call_heads(model, x)
        if tta:
            flipped = _call_heads(model, x[:, :, ::-1, :])
            out = {h: (p + flipped[h]) / 2.0 for h, p in out.items()}
        for head, p in out.items():
            parts.setdefault(head, []).append((ys[head].numpy(), ws[head].numpy() > 0, p))
    return {h: tuple(np.concatenate([b[i] for b in batches]) for i in range(3)) for h, batches in parts.items()}


def _call_heads(model, x) -> dict[str, np.ndarray]:
    out = model(x, training=False) if hasattr(model, "trainable_weights") else model(x)
    return {h: np.asarray(p) for h, p in out.items()}


def average_precision(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as the mean of precision at each positive's rank (None
    without positives)."""
    positives = int(y.sum())
    if not positives:
        return None
    order = np.argsort(-scores, kind="stable")
    hits = y[order] > 0
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].sum() / positives)


def choose_thresholds(y: np.ndarray, probs: np.ndarray, default: float = 0.5) -> list[float]:
    """Per label, the decision threshold with the best F1 on (y, probs) (validation data): the midpoint
    below the lowest score kept; `default` for a label without positives there."""
    out = []
    for j in range(y.shape[1]):
        truth, scores = y[:, j] > 0, probs[:, j]
        if not truth.any():
            out.append(default)
            continue
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(truth[order])
        f1 = 2 * tp / (np.arange(1, len(order) + 1) + truth.sum())
        best = int(np.argmax(f1))
        below = scores[order[best + 1]] if best + 1 < len(order) else 0.0
        out.append(float((scores[order[best]] + below) / 2.0))
    return out


def multilabel_metrics(y: np.ndarray, probs: np.ndarray, class_names: list[str],
                       thresholds: list[float] | None = None) -> dict:
    """Per-label precision/recall/F1/support/average precision at the decision thresholds (0.5 unless
    given), micro and macro F1, mean average precision, per-label accuracy and exact-match accuracy."""
    n, c = y.shape[0], len(class_names)
    thresholds = list(thresholds) if thresholds is not None else [0.5] * c
    truth, pred = y > 0, probs >= np.asarray(thresholds)[None, :]
    tp, fp, fn = ((truth & pred).sum(0), (~truth & pred).sum(0), (truth & ~pred).sum(0))
    precision = np.divide(tp, tp + fp, out=np.zeros(c), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros(c), where=(tp + fn) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(c), where=(precision + recall) > 0)
    aps = [average_precision(y[:, j], probs[:, j]) for j in range(c)]
    micro_p = tp.sum() / max(tp.sum() + fp.sum(), 1)
    micro_r = tp.sum() / max(tp.sum() + fn.sum(), 1)
    known = [a for a in aps if a is not None]
    return {
        "multi_label": True,
        "num_examples": int(n),
        "accuracy": float((truth == pred).mean()) if n else None,  # per label, as the training log's accuracy
        "exact_match": float((truth == pred).all(axis=1).mean()) if n else None,
        "micro_f1": float(2 * micro_p * micro_r / (micro_p + micro_r)) if micro_p + micro_r else 0.0,
        "macro_f1": float(f1.mean()),
        "mean_average_precision": float(np.mean(known)) if known else None,
        "thresholds": {name: float(t) for name, t in zip(class_names, thresholds, strict=True)},
        "per_class": {name: {"precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
                             "support": int(truth[:, j].sum()), "average_precision": aps[j],
                             "threshold": float(thresholds[j])} for j, name in enumerate(class_names)},
    }


def task_metrics(predictions: dict, tasks, top_k: int = 5, thresholds: dict | None = None) -> dict:
    """Metrics per task over the examples labelled for it (`predictions` from predict_heads; `tasks`
    are tf_transfer.tasks.Task; `thresholds` {task: per-label thresholds} for multi-label tasks), with
    the mean of the tasks' accuracies as `accuracy`."""
    out = {}
    for t in tasks:
        y, mask, probs = predictions[t.head]
        y, probs = y[mask], probs[mask]
        if t.multi_label:
            out[t.name] = multilabel_metrics(y, probs, list(t.class_names), (thresholds or {}).get(t.name))
        else:
            out[t.name] = metrics(y.argmax(-1), probs, list(t.class_names), top_k)
    accuracies = [m["accuracy"] for m in out.values() if m["accuracy"] is not None]
    return {"num_examples": len(next(iter(predictions.values()))[0]),
            "accuracy": float(np.mean(accuracies)) if accuracies else None, "tasks": out}


def format_multilabel(m: dict, title: str = "") -> str:
    """A readable multi-label report: per label at its threshold, then the averages."""
    names = list(m["per_class"])
    width = max(12, *(len(n) for n in names))
    lines = [title] if title else []
    lines.append(f"{'':<{width}} {'threshold':>9} {'precision':>9} {'recall':>9} {'f1':>9} {'AP':>6} {'support':>9}")
    for name in names:
        r = m["per_class"][name]
        ap = f"{r['average_precision']:6.3f}" if r["average_precision"] is not None else f"{'-':>6}"
        lines.append(f"{name:<{width}} {r['threshold']:9.3f} {r['precision']:9.3f} {r['recall']:9.3f} {r['f1']:9.3f} "
                     f"{ap} {r['support']:9d}")
    mean_ap = m["mean_average_precision"]
    lines.append(f"micro F1 {m['micro_f1']:.4f}   macro F1 {m['macro_f1']:.4f}   mAP "
                 f"{mean_ap if mean_ap is None else round(mean_ap, 4)}   exact match {m['exact_match']:.4f}   "
                 f"label accuracy {m['accuracy']:.4f}   ({m['num_examples']} examples)")
    return "\n".join(lines)


def format_any(m: dict, title: str = "") -> str:
    """The readable report of any metrics dict: one task, a multi-label task, or every task of a run."""
    if "tasks" in m:
        return "\n\n".join(format_any(tm, f"{title} task {name}".strip() + ":") for name, tm in m["tasks"].items())
    return format_multilabel(m, title) if m.get("multi_label") else format_table(m, title)
