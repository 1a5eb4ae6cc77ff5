"""The classifier: raw pixels in, preprocessing inside, backbone, pooler, head, probabilities out."""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tf_transfer._keras import keras
from tf_transfer.backbones import Backbone, BackboneError
from tf_transfer.config import ModelConfig

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="tf_transfer")
class Preprocess(keras.layers.Layer):
    """Map raw 0-255 pixels to what the backbone was trained on.

    mode: 'none' (pass through), 'unit' ([0, 1], the TF-Hub image convention) or a
    keras.applications module name, whose own ``preprocess_input`` is applied.
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("none", "unit") and not hasattr(getattr(keras.applications, mode, None), "preprocess_input"):
            raise BackboneError(f"unknown preprocessing {mode!r}; expected 'none', 'unit' or a Keras Applications "
                                "module name such as 'mobilenet_v2', 'resnet' or 'efficientnet'")
        self.mode = mode

    def call(self, images):
        images = tf.cast(images, self.compute_dtype)
        if self.mode == "none":
            return images
        if self.mode == "unit":
            return images / 255.0
        return getattr(keras.applications, self.mode).preprocess_input(images)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tf_transfer")
class Classifier(keras.Model):
    """The functional classifier, with a training step whose backward pass stops at the lowest
    trainable layer.

    A GradientTape watches every variable created trainable, and Keras' `trainable = False` does not
    change that: the default step records the frozen layers too and leaves it to graph pruning to
    drop their gradients. Watching only the trainable variables keeps frozen layers off the tape, so
    no gradient op below the fine-tuned layers is ever built, in graph or eager mode.
    """

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(self.trainable_variables)
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return self.compute_metrics(x, y, y_pred, sample_weight)


def custom_objects() -> dict:
    """Objects needed to load a tf_transfer Keras model with keras.models.load_model."""
    import tensorflow_hub as hub

    return {"Preprocess": Preprocess, "Classifier": Classifier, "KerasLayer": hub.KerasLayer}


def build_head(num_classes: int, features: int, cfg: ModelConfig) -> keras.Sequential:
    """Dropout (+ optional hidden layer) + Dense softmax over the classes; float32 output."""
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    layers = [keras.Input((features,), name="features"), keras.layers.Dropout(cfg.dropout, name="dropout")]
    if cfg.hidden_units:
        layers += [
            keras.layers.Dense(cfg.hidden_units, activation="relu", kernel_regularizer=reg, name="hidden"),
            keras.layers.Dropout(cfg.dropout, name="hidden_dropout"),
        ]
    layers.append(keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32",
                                     name="probabilities"))
    return keras.Sequential(layers, name="head")


def build_classifier(backbone: Backbone, num_classes: int, cfg: ModelConfig, train_bn: bool = False) -> keras.Model:
    """image (float 0-255) -> preprocess -> backbone -> pooler -> head -> class probabilities.

    The backbone runs in inference mode (frozen BatchNorm statistics) unless train_bn is set.
    """
    size = backbone.image_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = Preprocess(backbone.preprocess, name="preprocess")(inputs)
    features = backbone.layer(x) if train_bn else backbone.layer(x, training=False)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="pooler")(features)
    elif len(features.shape) != 2:
        raise BackboneError(f"backbone output has shape {features.shape}; expected a feature map [B, H, W, C] or "
                            "a feature vector [B, D]")
    outputs = build_head(num_classes, int(features.shape[-1]), cfg)(features)
    return Classifier(inputs, outputs, name="classifier")


def backbone_of(model: keras.Model) -> keras.layers.Layer:
    return model.get_layer("backbone")


def freeze_backbone(model: keras.Model) -> None:
    """Phase 1: nothing in the backbone trains."""
    backbone_of(model).trainable = False


def _is_batchnorm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def unfreeze_top(model: keras.Model, unfreeze: str, train_bn: bool = False) -> list[str]:
    """Phase 2: unfreeze the top N backbone layers, 'all', or every layer from a named layer/block up.

    BatchNorm layers stay frozen unless train_bn. Returns the names of the layers now trainable.
    A TF-Hub backbone is one opaque layer: any non-zero unfreeze makes all of it trainable.
    """
    backbone = backbone_of(model)
    if not isinstance(backbone, keras.Model):  # hub.KerasLayer
        backbone.trainable = unfreeze.strip() != "0"
        return [backbone.name] if backbone.trainable else []
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    spec = unfreeze.strip()
    if spec == "all":
        start = 0
    elif spec.isdigit():
        start = max(0, len(layers) - int(spec))
    else:
        matches = [i for i, layer in enumerate(layers) if layer.name == spec or layer.name.startswith(spec)]
        if not matches:
            blocks = sorted({layer.name.rsplit("_", 1)[0] for layer in layers if "block" in layer.name})[:12]
            examples = ", ".join(blocks) or layers[-1].name
            raise BackboneError(f"--unfreeze {spec!r}: no backbone layer is named or starts with {spec!r}; "
                                f"expected a layer count, 'all' or a name such as {examples}")
        start = matches[0]
    backbone.trainable = True
    unfrozen = []
    for i, layer in enumerate(layers):
        layer.trainable = i >= start and (train_bn or not _is_batchnorm(layer))
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> int:
    """Set the moving-average momentum of every BatchNorm layer in the backbone; returns how many."""
    backbone = backbone_of(model)
    layers = [la for la in getattr(backbone, "layers", []) if _is_batchnorm(la)]
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


def count_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))
