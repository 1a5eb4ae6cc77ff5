"""A trained classifier's backbone as a reusable feature extractor in the TF-Hub format.

The image feature-vector contract of TF-Hub: float32 images ``[batch, size, size, 3]`` with values in
[0, 1] in, a feature vector ``[batch, features]`` out. The run's own preprocessing sits inside, so a
consumer only scales pixels to [0, 1]. Saved as a Keras SavedModel, it is a reusable SavedModel:
``__call__`` takes ``training`` (BatchNorm and dropout follow it), and ``variables``,
``trainable_variables`` and ``regularization_losses`` are there for ``hub.KerasLayer(trainable=True)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tf_transfer._keras import keras
from tf_transfer.errors import ExportError


def feature_model(classifier: keras.Model) -> keras.Model:
    """[0, 1] pixels -> 0-255 -> the classifier's preprocessing -> backbone -> pooler -> features.
    The layers (and so the weights) are the classifier's own."""
    size = int(classifier.input_shape[1])
    inputs = keras.Input((size, size, 3), dtype="float32", name="images")
    x = keras.layers.Rescaling(255.0, name="to_0_255")(inputs)
    x = classifier.get_layer("preprocess")(x)
    x = classifier.get_layer("backbone")(x)
    if any(layer.name == "pooler" for layer in classifier.layers):
        x = classifier.get_layer("pooler")(x)
    return keras.Model(inputs, x, name="feature_vector")


def save(features: keras.Model, folder: Path) -> None:
    """Write the feature extractor as a SavedModel (no optimizer, no training configuration)."""
    features.save(str(folder), save_format="tf", include_optimizer=False)


def check_round_trip(features: keras.Model, folder: Path, seed: int = 0) -> dict:
    """Reload the folder the way a consumer does (hub.KerasLayer, trainable) and compare its features
    with the in-memory model's on random images; ExportError if they differ or nothing is trainable."""
    import tensorflow_hub as hub

    size = int(features.input_shape[1])
    images = np.random.default_rng(seed).random((4, size, size, 3), dtype=np.float32)
    layer = hub.KerasLayer(str(folder), trainable=True)
    got = np.asarray(layer(images, training=False))
    want = np.asarray(features(images, training=False))
    diff = float(np.abs(got - want).max())
    result = {"max_feature_diff": diff, "feature_size": int(want.shape[-1]),
              "trainable_variables": len(layer.trainable_variables), "variables": len(layer.variables)}
    if got.shape != want.shape or diff > 1e-4 * max(1.0, float(np.abs(want).max())):
        raise ExportError(f"the published backbone does not reproduce the run's features (max difference {diff:.3g})")
    if not layer.trainable_variables:
        raise ExportError("the published backbone has no trainable variables; hub.KerasLayer could not fine-tune it")
    return result
