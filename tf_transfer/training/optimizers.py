"""Optimizers and learning-rate schedules for fine-tuning.

- Discriminative learning rates: each backbone block below the top trains at `decay` times the rate of
  the block above it; the head keeps the full rate. The rates really differ per variable (Adam is
  invariant to gradient scale, so scaling gradients would change nothing).
- Warm-up then cosine decay over a stage's steps.
"""

from __future__ import annotations

import math
import re

import tensorflow as tf

from tf_transfer._keras import keras

# Layer-name patterns of the blocks Keras Applications families are built of (MobileNetV2 block_16_*,
# EfficientNet block6a_*, ResNet conv5_block3_*, ConvNeXt stage_3_*, RegNet *_Stage_2_*, DenseNet conv4_block5_*).
_BLOCK = re.compile(r"^(.*?(?:block_?\d+[a-z]?|conv\d+_block\d+|stage_?\d+_block_?\d+|stage_?\d+|mixed\d+))(?:_|$)",
                    re.IGNORECASE)


def block_of(layer_name: str) -> str | None:
    """The block a backbone layer belongs to, by name; None for a layer outside the named blocks."""
    match = _BLOCK.match(layer_name)
    return match.group(1) if match else None


def backbone_blocks(backbone) -> list[list]:
    """The backbone's layers with weights grouped into blocks, top (output side) first.

    Layers outside the named blocks join the block before them (a block's own projection or
    normalisation); those before the first block form the stem, those after the last one the top.
    """
    layers = [la for la in getattr(backbone, "layers", []) if la.weights]
    if not layers:  # an opaque layer (a TF-Hub handle): one block
        return [[backbone]]
    groups: list[tuple[str, list]] = []
    for layer in layers:
        name = block_of(layer.name)
        if name is not None and (not groups or groups[-1][0] != name):
            groups.append((name, [layer]))
        elif groups and (name is None or groups[-1][0] == name) and groups[-1][0] != "stem":
            groups[-1][1].append(layer)
        elif not groups:
            groups.append(("stem", [layer]))
        else:  # still in the stem
            groups[-1][1].append(layer)
    last_named = max((i for i, (n, _) in enumerate(groups) if n != "stem"), default=-1)
    if last_named >= 0:  # non-block layers after the last block: the top block of their own
        named, members = groups[last_named]
        tail = [la for la in members if block_of(la.name) is None]
        if tail and tail != members:
            groups[last_named] = (named, [la for la in members if la not in tail])
            groups.append(("top", tail))
    return [members for _, members in reversed(groups)]


def layer_rates(model, decay: float) -> dict[str, float]:
    """{variable name: learning-rate factor}: 1 for the head and the top backbone block, decay**k for the
    k-th block below it."""
    backbone = model.get_layer("backbone")
    factors = {}
    for depth, block in enumerate(backbone_blocks(backbone)):
        for layer in block:
            for w in layer.weights:
                factors[w.name] = decay ** depth
    return factors


class _Discriminative:
    """Mixin for Keras optimizers: a learning-rate factor per variable, applied while its update is built."""

    def __init__(self, *args, factors: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._factors = dict(factors or {})
        self._current_factor = None

    @property
    def learning_rate(self):
        lr = super().learning_rate
        return lr if self._current_factor is None else lr * self._current_factor

    @learning_rate.setter
    def learning_rate(self, value):
        keras.optimizers.Adam.learning_rate.fset(self, value)

    def update_step(self, gradient, variable):
        factor = self._factors.get(_name(variable), 1.0)
        self._current_factor = None if factor == 1.0 else factor
        try:
            return super().update_step(gradient, variable)
        finally:
            self._current_factor = None

    def get_config(self):
        return {**super().get_config(), "factors": self._factors}


def _name(variable) -> str:
    container = getattr(variable, "_distributed_container", None)
    return (container() if callable(container) else variable).name


class DiscriminativeAdam(_Discriminative, keras.optimizers.Adam):
    """Adam with per-variable learning-rate factors."""


class DiscriminativeAdamW(_Discriminative, keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate factors (decoupled weight decay at the variable's own rate)."""

    def _apply_weight_decay(self, variables):
        for variable in variables:  # each variable decays at its own learning rate
            factor = self._factors.get(_name(variable), 1.0)
            self._current_factor = None if factor == 1.0 else factor
            try:
                super()._apply_weight_decay([variable])
            finally:
                self._current_factor = None


@keras.saving.register_keras_serializable(package="tf_transfer")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup` steps, then cosine decay to `floor` x the peak at `total` steps
    (steps of the stage's own optimizer, which a resumed stage restores)."""

    def __init__(self, peak: float, total: int, warmup: int, floor: float = 0.0):
        self.peak, self.total, self.warmup, self.floor = peak, max(total, 1), warmup, floor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / float(max(self.warmup, 1))
        progress = tf.clip_by_value((step - self.warmup) / float(max(self.total - self.warmup, 1)), 0.0, 1.0)
        cosine = self.peak * (self.floor + (1 - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * progress)))
        return tf.where(step < self.warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup, "floor": self.floor}
