"""Matplotlib figures of a run. Every function returns a Figure (no pyplot state, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tf_transfer import folders


def history_curves(history: Sequence[dict], phase_boundary: int = 0, stages: Sequence[dict] = ()) -> Figure:
    """Loss and accuracy per epoch (train and validation), with where fine-tuning (and each later
    stage, from `stages` as the run's history records them) begins marked."""
    marks = [(s["first_epoch"], s["name"]) for s in stages if s.get("phase", 1) > 1]
    if not marks and phase_boundary:
        marks = [(phase_boundary + 1, "fine-tuning")]
    fig = Figure(figsize=(11, 4), layout="constrained")
    epochs = [e["epoch"] for e in history]
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = [e.get(prefix + key) for e in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, ms=3,
                        label="validation" if prefix else "training")
        for first, label in marks:
            if 1 < first <= (epochs[-1] if epochs else 0):
                ax.axvline(first - 0.5, color="grey", ls=":", lw=1.5)
                ax.text(first - 0.4, ax.get_ylim()[1], f" {label}", va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def confusion(matrix: Sequence[Sequence[int]], class_names: list[str], normalize: bool = True) -> Figure:
    """Confusion matrix (rows: true class; normalised per row unless normalize=False)."""
    cm = np.asarray(matrix, dtype=float)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 20:
        for (i, j), v in np.ndenumerate(shown):
            ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.5 * shown.max() else "black")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    return fig


def per_class_f1(metrics: dict, title: str = "per-class F1") -> Figure:
    """F1 per class (per label at its threshold for a multi-label task) and the macro average."""
    names = list(metrics["per_class"])
    f1 = [metrics["per_class"][n]["f1"] for n in names]
    fig = Figure(figsize=(max(5, 0.4 * len(names) + 2), 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(names)), f1, color="tab:blue")
    macro = metrics["macro_f1"] if metrics.get("multi_label") else metrics["macro_avg"]["f1"]
    ax.axhline(macro, color="tab:red", ls="--", lw=1, label="macro F1")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def image_grid(images: np.ndarray, titles: Sequence[str], colours: Sequence[str], title: str, cols: int = 6) -> Figure:
    """A grid of uint8 images with a caption each (used for samples and worst mistakes)."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(2.0 * cols, 2.25 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption, colour in zip(axes, images, titles, colours, strict=False):
        ax.imshow(np.asarray(image, dtype=np.uint8))
        ax.set_title(caption, fontsize=7, color=colour)
    fig.suptitle(title)
    return fig


def predictions_grid(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                     title: str) -> Figure:
    pred = probs.argmax(-1)
    titles = [f"true {class_names[t]}\npred {class_names[p]} {probs[i, p]:.2f}"
              for i, (t, p) in enumerate(zip(labels, pred, strict=True))]
    colours = ["tab:green" if t == p else "tab:red" for t, p in zip(labels, pred, strict=True)]
    return image_grid(images, titles, colours, title)


def class_distribution(counts: dict[str, dict[str, int]]) -> Figure:
    """Images per class in each split (stacked bars)."""
    names = list(counts)
    fig = Figure(figsize=(max(5, 0.4 * len(names) + 2), 3.5), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(names))
    for split in ("train", "val", "test"):
        values = np.array([counts[n].get(split, 0) for n in names])
        ax.bar(range(len(names)), values, bottom=bottom, label=split)
        bottom += values
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title("class distribution by split")
    return fig


def metric_vs_hyperparameters(values: Sequence[dict], metric: Sequence[float], metric_name: str) -> Figure:
    """One scatter panel per hyperparameter: the metric of every trial against that value."""
    keys = list(values[0]) if values else []
    cols = min(4, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig = Figure(figsize=(3.4 * cols, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes, keys, strict=False):
        xs = [v[key] for v in values]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, metric, s=18)
            if min(xs) > 0 and max(xs) / min(xs) > 50:
                ax.set_xscale("log")
        else:  # categorical axis
            labels = sorted({str(x) for x in xs}, key=lambda s: (len(s), s))
            ax.scatter([labels.index(str(x)) for x in xs], metric, s=18)
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(metric_name, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric_name} of every trial")
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG (atomically)."""
    return folders.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
