"""The classifier: raw pixels in, preprocessing inside, backbone, pooler, head(s), probabilities out;
and what each phase freezes and unfreezes in it."""

from __future__ import annotations

import logging

import numpy as np

from tf_transfer import folders
from tf_transfer._keras import keras
from tf_transfer.config import ModelConfig
from tf_transfer.errors import BackboneError
from tf_transfer.models import backbones
from tf_transfer.models.backbones import Backbone
from tf_transfer.models.layers import Classifier, Preprocess
from tf_transfer.tasks import Task

log = logging.getLogger(__name__)


def build_head(spec: Task, features: int, cfg: ModelConfig) -> keras.Sequential:
    """Dropout (+ optional hidden layer) + Dense softmax over the classes (sigmoid per label for a
    multi-label task); float32 output."""
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    layers = [keras.Input((features,), name="features"), keras.layers.Dropout(cfg.dropout, name="dropout")]
    if cfg.hidden_units:
        layers += [
            keras.layers.Dense(cfg.hidden_units, activation="relu", kernel_regularizer=reg, name="hidden"),
            keras.layers.Dropout(cfg.dropout, name="hidden_dropout"),
        ]
    layers.append(keras.layers.Dense(spec.num_classes, activation="sigmoid" if spec.multi_label else "softmax",
                                     kernel_regularizer=reg, dtype="float32", name="probabilities"))
    return keras.Sequential(layers, name=spec.head)


def build_classifier(backbone: Backbone, heads: list[Task] | int, cfg: ModelConfig,
                     train_bn: bool = False) -> keras.Model:
    """image (float 0-255) -> preprocess -> backbone -> pooler -> head(s) -> class probabilities.

    `heads` lists the tasks (an int n means one task of n unnamed classes). One unnamed task gives one
    output tensor; named tasks give a dict {head_<task>: probabilities}. The backbone runs in inference
    mode (frozen BatchNorm statistics) unless train_bn is set.
    """
    if isinstance(heads, int):
        heads = [Task("", tuple(str(i) for i in range(heads)))]
    if not heads or (len(heads) > 1 and not all(h.name for h in heads)):
        raise BackboneError(f"expected one unnamed task or several named ones, got {[h.name for h in heads]}")
    size = backbone.image_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = Preprocess(backbone.preprocess, name="preprocess")(inputs)
    features = backbone.layer(x) if train_bn else backbone.layer(x, training=False)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="pooler")(features)
    elif len(features.shape) != 2:
        raise BackboneError(f"backbone output has shape {features.shape}; expected a feature map [B, H, W, C] or "
                            "a feature vector [B, D]")
    dim = int(features.shape[-1])
    if not heads[0].name:
        return Classifier(inputs, build_head(heads[0], dim, cfg)(features), name="classifier")
    return Classifier(inputs, {h.head: build_head(h, dim, cfg)(features) for h in heads}, name="classifier")


def build_text_classifier(backbone, heads: list[Task], cfg: ModelConfig) -> keras.Model:
    """text (UTF-8 strings) -> preprocess (tokenise) -> backbone (encoder) -> pooler -> head(s).

    `backbone` is a models.text_backbones.TextBackbone. Dropout in the encoder is active while it trains."""
    import tensorflow as tf

    from tf_transfer.models.text import TextPooler

    inputs = keras.Input((), dtype=tf.string, name="text")
    encoded = backbone.preprocess(inputs)
    outputs = backbone.layer(encoded)
    # hub encoders return more outputs than the pooler needs: pass on the two of the BERT contract
    wanted = {k: v for k, v in outputs.items() if k in ("sequence_output", "pooled_output")}
    features = TextPooler(backbone.pooling, name="pooler")(wanted, encoded["input_mask"])
    dim = int(features.shape[-1])
    if not heads[0].name:
        return Classifier(inputs, build_head(heads[0], dim, cfg)(features), name="classifier")
    return Classifier(inputs, {h.head: build_head(h, dim, cfg)(features) for h in heads}, name="classifier")


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's heads in output order ('head', or 'head_<task>' for each named task)."""
    return [model.get_layer(name) for name in model.output_names]


def model_tasks(model: keras.Model) -> list[Task]:
    """The tasks of a model's heads, read from the model (classes numbered: names live with the data):
    one unnamed task for a single output, else one per head_<task>, multi-label where it is sigmoid."""
    out = []
    for head in head_layers(model):
        dense = head.get_layer("probabilities")
        name = head.name.removeprefix("head_") if isinstance(model.output, dict) else ""
        out.append(Task(name, tuple(map(str, range(dense.units))), dense.activation.__name__ == "sigmoid"))
    return out


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


def rebuild(model_cfg: ModelConfig, heads: list[Task] | int, image_size: int, weights_file: str,
            train_bn: bool = False) -> keras.Model:
    """A run's classifier outside any distribution strategy, with the weights of `weights_file`."""
    # The weights file replaces whatever the backbone starts with, so skip any download.
    bb = backbones.build(model_cfg.backbone, "none", image_size, model_cfg.cut_layer, model_cfg.preprocess)
    model = build_classifier(bb, heads, model_cfg, train_bn=train_bn)
    folders.load_model_weights(model, weights_file)
    return model
