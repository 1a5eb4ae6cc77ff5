"""Input pipeline throughput: tf_transfer's pipeline against keras' image_dataset_from_directory.

Same folder of 500x375 JPEGs, same output (224x224 batches of 32), one full pass each, in turns.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import tensorflow as tf

from benchmarks.common import interleaved, write_photo_like_jpegs
from tf_transfer._keras import keras
from tf_transfer.config import DataConfig
from tf_transfer.data import datasets as data
from tf_transfer.data import images

SIZE, BATCH = 224, 32


def _drain(ds) -> int:
    n = 0
    for x, _ in ds:
        n += int(x.shape[0])
    return n


def run(workdir: Path, per_class: int = 200, repeats: int = 7) -> dict:
    root = write_photo_like_jpegs(workdir / "jpegs", per_class=per_class)
    cfg = DataConfig(source=str(root), image_size=SIZE, batch_size=BATCH, val_fraction=0.0, test_fraction=0.0,
                     cache="none", augment=False)
    d = data.prepare(cfg, seed=0)
    n = len(d.splits["train"])

    def ours():
        assert _drain(data.pipeline(d, "train", cfg, SIZE, 0)) == n

    def keras_idfd():
        ds = keras.utils.image_dataset_from_directory(str(root), image_size=(SIZE, SIZE), batch_size=BATCH,
                                                      shuffle=False, label_mode="categorical")
        assert _drain(ds) == n

    def keras_idfd_prefetch():
        ds = keras.utils.image_dataset_from_directory(str(root), image_size=(SIZE, SIZE), batch_size=BATCH,
                                                      shuffle=False, label_mode="categorical")
        assert _drain(ds.prefetch(tf.data.AUTOTUNE)) == n

    def scan():
        assert not images.find_unreadable([e.key for e in d.splits["train"]])

    cached_cfg = DataConfig(**{**cfg.__dict__, "cache": "memory"})
    cached = data.pipeline(d, "train", cached_cfg, SIZE, 0)
    _drain(cached)  # fill the cache

    def ours_cached_epoch():
        assert _drain(cached) == n

    t = interleaved({"ours": ours, "keras": keras_idfd, "keras_prefetch": keras_idfd_prefetch, "scan": scan,
                     "ours_cached": ours_cached_epoch}, repeats=repeats)
    ips = {k: n / v for k, v in t.items()}
    return {
        "images": n,
        "images_per_s": ips,
        "ratio_vs_keras": ips["ours"] / ips["keras"],
        "ratio_vs_keras_spread": t.ratio("keras", "ours"),  # seconds(keras) / seconds(ours) = speed ratio
        "cached_epoch_ratio_spread": t.ratio("ours", "ours_cached"),
        "scan_cost_spread": t.ratio("scan", "ours"),
        "ratio_vs_keras_prefetch": ips["ours"] / ips["keras_prefetch"],
        "cached_epoch_ratio": ips["ours_cached"] / ips["ours"],
    }


if __name__ == "__main__":
    import json

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
