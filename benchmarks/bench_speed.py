"""Issue 8's speed work, each measured against its baseline in the same run:

- phase 1 of E epochs on cached backbone features (cache built inside the timing) against the live
  image pipeline;
- a phase 2 training step with the top 20% of the backbone unfrozen against all of it unfrozen, and
  tf_transfer's training step against Keras' default one;
- decoding large photos at a DCT scale against full-size decoding.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks.common import interleaved, write_photo_like_jpegs
from tf_transfer import config as config_lib
from tf_transfer._keras import keras
from tf_transfer.data import datasets as data
from tf_transfer.data import images
from tf_transfer.folders import RunDir
from tf_transfer.models import backbones
from tf_transfer.models import classifier as model_lib
from tf_transfer.training import distribute
from tf_transfer.training.phases import Stage
from tf_transfer.training.trainer import Inputs, Trainer
from tf_transfer.workflows.images import Images

SIZE, BATCH = 224, 32


def _phase1(workdir: Path, epochs: int, augment: bool, views: int, per_class: int, repeats: int,
            backbone: str = "mobilenet_v2_0.35", weights: str = "imagenet") -> dict:
    root = write_photo_like_jpegs(workdir / "jpegs", per_class=per_class)
    config = config_lib.apply_overrides(config_lib.Config(), {
        "data.source": str(root), "data.image_size": SIZE, "data.batch_size": BATCH, "data.test_fraction": 0.0,
        "data.augment": augment, "phase1.epochs": epochs, "phase1.patience": 0, "phase1.feature_views": views,
        "model.backbone": backbone, "model.weights": weights, "phase1.feature_cache": str(workdir / "features")})
    images_ = data.prepare(config.data, config.seed)
    bb = backbones.build(backbone, weights, SIZE)
    model = model_lib.build_classifier(bb, images_.num_classes, config.model)
    model_lib.freeze_backbone(model)
    start_weights = model.get_weights()
    stage = Stage(phase=1, epochs=epochs, learning_rate=1e-3, patience=0)

    def fit(inputs: Inputs) -> None:  # phase 1 as the trainer runs it, in a fresh run folder
        Trainer(config, RunDir(tempfile.mkdtemp(dir=workdir)), model, None, None).fit(stage, inputs)

    def head_on_features() -> Inputs:
        with distribute.session(config) as session:
            return Images(config).cached_features(model, images_, session)

    def live():  # what phase 1 does without the cache: decode (cached after epoch 1) and the backbone every epoch
        model.set_weights(start_weights)
        tr = data.pipeline(images_, "train", config.data, SIZE, config.seed, training=True)
        va = data.pipeline(images_, "val", config.data, SIZE, config.seed)
        fit(Inputs(model, tr, va))

    def cached():  # a cold cache: building it is part of the cost
        model.set_weights(start_weights)
        shutil.rmtree(workdir / "features", ignore_errors=True)
        fit(head_on_features())

    def warm():  # the second run of the same data: the cache is reused
        model.set_weights(start_weights)
        fit(head_on_features())

    cached()  # trace once; also leaves a cache for `warm`
    t = interleaved({"live": live, "cached": cached, "warm": warm}, repeats=repeats)
    return {"backbone": backbone, "epochs": epochs, "augment": augment, "views": views if augment else 1,
            "train_images": len(images_.splits["train"]), "seconds": t,
            "speedup": t["live"] / t["cached"], "speedup_warm": t["live"] / t["warm"],
            "speedup_spread": t.ratio("live", "cached"), "speedup_warm_spread": t.ratio("live", "warm")}


class _KerasDefaultStep(keras.Model):
    """The same functional model with Keras' own train_step (the tape watches frozen variables too)."""


def _phase2(size: int = 160, batch: int = BATCH, repeats: int = 5) -> dict:
    bb_layers = None
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    models = {}
    for name, unfreeze, default_step in (("top20", "top", False), ("all", "all", False),
                                          ("top20_keras_step", "top", True)):
        bb = backbones.build("mobilenet_v2_1.0", "none", size)
        model = model_lib.build_classifier(bb, 10, config_lib.ModelConfig())
        if default_step:
            model = _KerasDefaultStep(model.inputs, model.outputs)
        bb_layers = [la for la in model_lib.backbone_of(model).layers if not isinstance(la, keras.layers.InputLayer)]
        spec = str(len(bb_layers) // 5) if unfreeze == "top" else "all"
        model_lib.unfreeze_top(model, spec)
        model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy")
        for _ in range(2):
            model.train_on_batch(x, y)
        models[name] = model

    def steps(m):
        return lambda: [m.train_on_batch(x, y) for _ in range(3)]

    t = interleaved({k: steps(m) for k, m in models.items()}, repeats=repeats)
    per_step = {k: v / 3 for k, v in t.items()}
    return {"layers": len(bb_layers), "top20_layers": len(bb_layers) // 5, "image_size": size, "batch": batch,
            "step_seconds": per_step, "ratio_top20_vs_all": per_step["top20"] / per_step["all"],
            "ratio_ours_vs_keras_step": per_step["top20"] / per_step["top20_keras_step"],
            "ratio_top20_vs_all_spread": t.ratio("top20", "all"),
            "ratio_ours_vs_keras_step_spread": t.ratio("top20", "top20_keras_step")}


def _large_photos(workdir: Path, count: int = 24, repeats: int = 5) -> dict:
    root = write_photo_like_jpegs(workdir / "large", classes=1, per_class=count, size=(3000, 2000), seed=3)
    blobs = [p.read_bytes() for p in sorted(root.rglob("*.jpg"))]
    ds = tf.data.Dataset.from_tensor_slices(blobs)

    def full(b):
        return images.resize(images.decode(b), SIZE)

    def drain(fn):
        return lambda: sum(1 for _ in ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(8))

    t = interleaved({"dct": drain(lambda b: images.decode_and_resize(b, SIZE)), "full": drain(full)},
                    repeats=repeats)
    ips = {k: count / v for k, v in t.items()}
    mb = sum(len(b) for b in blobs) / len(blobs) / 1e6
    return {"images": count, "mb_per_image": mb, "images_per_s": ips, "speedup": ips["dct"] / ips["full"],
            "speedup_spread": t.ratio("full", "dct")}


def run(workdir: Path, per_class: int = 200) -> dict:
    return {
        "phase1_plain": _phase1(workdir, epochs=5, augment=False, views=1, per_class=per_class, repeats=3),
        # Speed does not depend on weight values: random weights stand in for the ImageNet download.
        "phase1_heavier": _phase1(workdir, epochs=5, augment=False, views=1, per_class=per_class, repeats=3,
                                  backbone="mobilenet_v2_1.0", weights="none"),
        "phase1_augmented": _phase1(workdir, epochs=10, augment=True, views=3, per_class=per_class, repeats=3),
        "phase2": _phase2(),
        "large_photos": _large_photos(workdir),
    }


if __name__ == "__main__":
    import json
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=2, default=str))
