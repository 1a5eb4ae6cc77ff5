"""Evaluation: one prediction pass over a non-shuffled split, metrics from labels and predictions."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_transfer._keras import keras


def predict(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, probabilities) from a single pass, so that the two always line up."""
    labels, probs = [], []
    for x, y in dataset:
        probs.append(model(x, training=False).numpy())
        labels.append(np.argmax(y.numpy(), axis=-1))
    return np.concatenate(labels), np.concatenate(probs)


def metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, mean cross-entropy, and per-class support/correct/accuracy."""
    pred = probs.argmax(axis=-1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
    per_class = {}
    for c, name in enumerate(class_names):
        mask = labels == c
        support = int(mask.sum())
        correct = int((pred[mask] == c).sum())
        per_class[name] = {"support": support, "correct": correct,
                           "accuracy": correct / support if support else None}
    return {"num_examples": len(labels), "accuracy": float((pred == labels).mean()) if len(labels) else None,
            "loss": loss, "per_class": per_class}


def evaluate(model: keras.Model, dataset: tf.data.Dataset, class_names: list[str]) -> dict:
    labels, probs = predict(model, dataset)
    return metrics(labels, probs, class_names)
