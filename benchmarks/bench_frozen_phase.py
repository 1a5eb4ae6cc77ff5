"""Frozen-phase (phase 1) training throughput: the full tf_transfer pipeline (read, decode, cache,
shuffle, augment) against the same model fed in-memory tensors, same batches, epochs after the first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import interleaved, write_photo_like_jpegs
from tf_transfer._keras import keras
from tf_transfer.config import DataConfig, ModelConfig
from tf_transfer.data import datasets as data
from tf_transfer.models import backbones
from tf_transfer.models import classifier as model_lib

SIZE, BATCH = 224, 32


def _compiled_classifier(num_classes: int):
    bb = backbones.build("mobilenet_v2_0.35", "imagenet", SIZE)
    m = model_lib.build_classifier(bb, num_classes, ModelConfig())
    model_lib.freeze_backbone(m)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    return m


def run(workdir: Path, per_class: int = 100, repeats: int = 3) -> dict:
    root = write_photo_like_jpegs(workdir / "jpegs", per_class=per_class)
    base = dict(source=str(root), image_size=SIZE, batch_size=BATCH, val_fraction=0.0, test_fraction=0.0)
    d = data.prepare(DataConfig(**base), seed=0)
    n = len(d.splits["train"])
    model = _compiled_classifier(d.num_classes)
    augmented = data.pipeline(d, "train", DataConfig(**base), SIZE, 0, training=True)
    plain = data.pipeline(d, "train", DataConfig(**base, augment=False), SIZE, 0, training=True)
    x = np.concatenate([b.numpy() for b, _ in plain])
    y = np.concatenate([t.numpy() for _, t in plain])
    # Warm up: fill the caches and trace the train function once for each input kind.
    model.fit(augmented, epochs=1, verbose=0)
    model.fit(plain, epochs=1, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)

    t = interleaved({
        "pipeline_augmented": lambda: model.fit(augmented, epochs=1, verbose=0),
        "pipeline_plain": lambda: model.fit(plain, epochs=1, verbose=0),
        "in_memory": lambda: model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=True),
    }, repeats=repeats)
    ips = {k: n / v for k, v in t.items()}
    return {
        "images": n,
        "images_per_s": ips,
        "ratio_plain_vs_in_memory": ips["pipeline_plain"] / ips["in_memory"],
        "ratio_plain_spread": t.ratio("in_memory", "pipeline_plain"),
        "ratio_augmented_spread": t.ratio("in_memory", "pipeline_augmented"),
        "ratio_augmented_vs_in_memory": ips["pipeline_augmented"] / ips["in_memory"],
    }


if __name__ == "__main__":
    import json

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
