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
