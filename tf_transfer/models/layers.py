"""tf_transfer's own Keras layers and model class, which saved models need to load again."""

from __future__ import annotations

import tensorflow as tf

from tf_transfer._keras import keras
from tf_transfer.errors import BackboneError


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
