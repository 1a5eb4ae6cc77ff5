"""Tasks and labels a model did not learn: results within noise of what a model that knows nothing gets.

- A single-label task is compared with always answering its most frequent class. Noise is an exact
  one-sided binomial test: if the model were right only as often as that majority rate, how likely is it
  to be right at least this often on this many examples? At a p-value of 0.05 or more the task is flagged.
- A multi-label label is compared with a random ranking of the same examples (whose average precision is
  about the label's prevalence). Noise is the spread of that random AP: the label is flagged when its AP is
  at or below the 95th percentile of the AP of 1,000 seeded shuffles of its scores.

Orientation words in a task's or label's name (left/right, top/bottom...) with flips on get a hint: a
flip turns the one into the other, so the augmented image contradicts its own label.

Where a split is too small for the test to reject at all (every example right would still be within
noise, a split of one class, no examples), the verdict is 'too few examples to tell', never 'not learnt'.
"""

from __future__ import annotations

import math
import re

import numpy as np

ALPHA = 0.05
SHUFFLES = 1000
# which flip swaps which words (config.data.flip values that include that flip)
ORIENTATION = {
    "horizontal": ({"left", "right"}, "horizontal flips swap left and right"),
    "vertical": ({"top", "bottom", "up", "down", "upper", "lower"}, "vertical flips swap top and bottom"),
}


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly (in log space: n may be large)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    i = np.arange(k, n + 1)
    logs = (math.lgamma(n + 1) - np.array([math.lgamma(j + 1) + math.lgamma(n - j + 1) for j in i])
            + i * math.log(p) + (n - i) * math.log1p(-p))
    return float(min(1.0, np.exp(logs).sum()))


def random_ap_quantile(y: np.ndarray, q: float = 1 - ALPHA, shuffles: int = SHUFFLES, seed: int = 0) -> float:
    """The q-quantile of the average precision of random rankings of labels y (0/1)."""
    y = np.asarray(y) > 0
    positives = int(y.sum())
    if not positives:
        return 0.0
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(y) for _ in range(shuffles)])
    precision = np.cumsum(ranked, axis=1) / np.arange(1, len(y) + 1)
    aps = (precision * ranked).sum(axis=1) / positives
    return float(np.quantile(aps, q))


def _hint(names: list[str], flip: str) -> str:
    words = {w for name in names for w in re.split(r"[^a-z]+", name.lower()) if w}
    hints = [text for kind, (swapped, text) in ORIENTATION.items() if kind in flip and words & swapped]
    return "; ".join(f"{h}: train with --flip none (or --no-augment)" for h in hints)


def single_label(task: str, m: dict, split: str, flip: str) -> dict | None:
    """A flag for a single-label task's metrics `m` whose accuracy is within noise of the majority rate, or
    whose split is too small (or of one class) for any accuracy to be told from it (verdict 'too_few')."""
    n, accuracy = m.get("num_examples") or 0, m.get("accuracy")
    supports = {name: c["support"] for name, c in m.get("per_class", {}).items()}
    if not n or accuracy is None or not supports:
        return _too_few(task, None, split, f"the {split} split has no examples of it")
    majority = max(supports, key=supports.get)
    rate = supports[majority] / n
    if binomial_tail(n, n, rate) >= ALPHA:  # even every example right would be within noise
        why = (f"the {split} split has one class only ({majority!r}, {n} examples)" if rate >= 1 else
               f"even {n} of {n} right would be within noise of always answering {majority!r} ({rate:.3f}); "
               f"it takes more {split} examples")
        return _too_few(task, None, split, why)
    p = binomial_tail(round(accuracy * n), n, rate)
    if p < ALPHA:
        return None
    return {"task": task, "label": None, "split": split, "verdict": "not_learnt", "metric": "accuracy",
            "value": accuracy, "chance": rate, "p_value": p, "hint": _hint([task, *supports], flip),
            "message": f"{split} accuracy {accuracy:.3f} is within noise of always answering {majority!r} "
                       f"({rate:.3f} of {n} examples; one-sided binomial test p={p:.2f})"}


def _too_few(task: str, label: str | None, split: str, why: str) -> dict:
    return {"task": task, "label": label, "split": split, "verdict": "too_few", "hint": "",
            "message": f"too few examples to tell: {why}"}


def multi_label(task: str, labels: list[str], y: np.ndarray, probs: np.ndarray, split: str, flip: str) -> list[dict]:
    """Flags for the labels of a multi-label task whose AP is within noise of a random ranking's."""
    out = []
    for j, label in enumerate(labels):
        truth = y[:, j] > 0
        if not truth.any() or truth.all():
            out.append(_too_few(task, label, split, f"the {split} split has {'no' if not truth.any() else 'only'} "
                                                    f"examples with it ({len(truth)} in all)"))
            continue
        noise = random_ap_quantile(truth)
        if noise >= 1.0:  # even a perfect ranking would be within noise
            out.append(_too_few(task, label, split, f"{int(truth.sum())} of {len(truth)} {split} examples have it; "
                                                    "even a perfect ranking would be within noise"))
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        hits = truth[order]
        ap = float((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits].sum() / hits.sum())
        if ap > noise:
            continue
        prevalence = float(truth.mean())
        out.append({"task": task, "label": label, "split": split, "verdict": "not_learnt",
                    "metric": "average_precision", "value": ap,
                    "chance": prevalence, "noise": noise, "hint": _hint([task, label], flip),
                    "message": f"{split} average precision {ap:.3f} is within noise of ranking at random "
                               f"(prevalence {prevalence:.3f}; 95% of random rankings reach {noise:.3f})"})
    return out


def describe(flag: dict) -> str:
    """One line naming what was not learnt, why it is flagged, and the hint if there is one."""
    what = f"task {flag['task']!r}" if flag["label"] is None else f"label {flag['label']!r} of task {flag['task']!r}"
    if not flag["task"]:
        what = "the model" if flag["label"] is None else f"label {flag['label']!r}"
    hint = f". {flag['hint'][0].upper()}{flag['hint'][1:]}" if flag["hint"] else ""
    if flag.get("verdict") == "too_few":
        return f"Cannot tell whether {what} was learnt: {flag['message']}"
    return f"Not learnt: {what}: {flag['message']}{hint}"


def find(m: dict, tasks, predictions: dict, split: str, flip: str) -> list[dict]:
    """Every task (single-label) and label (multi-label) of one split's metrics `m` that was not learnt
    (verdict 'not_learnt') or whose examples are too few to tell (verdict 'too_few').

    `tasks` are tf_transfer.tasks.Task; `predictions` the split's: (labels, probs) for one unnamed task,
    {head: (targets, labelled mask, probs)} for named ones; `flip` the training flips ('none' without)."""
    if not tasks[0].name:
        flag = None if tasks[0].multi_label else single_label("", m, split, flip)
        return [flag] if flag else []
    out: list[dict] = []
    for t in tasks:
        if t.multi_label:
            none = (np.zeros((0, t.num_classes)), np.zeros(0, bool), np.zeros((0, t.num_classes)))
            y, mask, probs = predictions.get(t.head, none)
            out += multi_label(t.name, list(t.class_names), y[mask], probs[mask], split, flip)
        else:
            flag = single_label(t.name, m.get("tasks", {}).get(t.name, {}), split, flip)
            out += [flag] if flag else []
    return out
