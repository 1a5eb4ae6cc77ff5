"""Phase 1's feature cache: the frozen backbone's pooled features, computed once per image.

While the backbone is frozen, every epoch of phase 1 would push the same images through the same
function. Instead the features that feed the head are computed once (for K augmented views of each
image when augmentation is on), written to disk, and the head trains on those vectors. The head is
the classifier's own `head` layer, so the weights it learns are the full model's, unchanged.

A cache entry is a folder named by a key over everything the features depend on: backbone name and
weight values, image size, preprocessing, precision, views and augmentation, the split's files with
their labels and contents. `manifest.json` is written last and records the data file's size and
SHA-256, so a partial or corrupted entry is detected, reported and rebuilt rather than used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_transfer import folders
from tf_transfer._keras import keras
from tf_transfer.config import Config
from tf_transfer.data import datasets as data_lib
from tf_transfer.models import classifier

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORDS = "features.tfrecord"
AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class FeatureSet:
    """One cache entry: `count` examples of `views` feature vectors of size `dim`, in split order."""

    path: Path
    count: int
    views: int
    dim: int
    built: bool  # computed by this run (False: reused from disk)


def cache_root(config: Config) -> Path:
    """The folder holding cache entries: --feature-cache PATH, else <tf_transfer cache>/features."""
    mode = config.phase1.feature_cache
    return Path(mode).expanduser() if mode not in ("auto", "on") else folders.cache_home() / "features"


def plan(config: Config, workers: int, kind: str) -> Path | None:
    """Where phase 1 caches features, or None when it trains on live images (and why, in the log)."""
    p1, mode = config.phase1, config.phase1.feature_cache
    views = effective_views(config)
    reason = None
    if mode == "off" or not p1.epochs:
        return None
    if workers > 1 or kind == "tpu":
        reason = f"the {kind} strategy reads its input on every worker or on the TPU host"
    elif mode == "auto" and p1.epochs <= 1:
        reason = "phase 1 has a single epoch (one pass either way)"
    elif mode == "auto" and views >= p1.epochs:
        reason = f"--feature-views {views} would cost as many backbone passes as the {p1.epochs} epochs it saves"
    if reason:
        (log.warning if mode != "auto" else log.info)("Feature cache off: %s", reason)
        return None
    return cache_root(config)


def effective_views(config: Config) -> int:
    """Augmented views per training image (1 without augmentation: every view would be the same)."""
    return config.phase1.feature_views if config.data.augment else 1


def feature_model(model: keras.Model) -> keras.Model:
    """Image in, the tensor that feeds the classifier's head out (the pooled backbone features)."""
    return keras.Model(model.inputs, classifier.head_layers(model)[0].get_input_at(0), name="features")


def head_model(model: keras.Model) -> keras.Model:
    """The classifier's own head(s) (shared weights) as a model of the cached features, with the
    classifier's outputs (one tensor, or {head_<task>: probabilities})."""
    heads = classifier.head_layers(model)
    inputs = keras.Input(heads[0].input_shape[1:], name="features")
    if not isinstance(model.output, dict):
        return keras.Model(inputs, heads[0](inputs), name="head_on_features")
    return keras.Model(inputs, {h.name: h(inputs) for h in heads}, name="head_on_features")


def extractor(model: keras.Model):
    """A traced function: input batch (images, or strings for a text model) -> head-input features (one
    trace serves every split and batch size)."""
    features_of = feature_model(model)
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)
    return tf.function(lambda x: features_of(x, training=False), input_signature=[spec])


def examples_digest(images: data_lib.ImageData, split: str) -> str:
    """A digest of a split's examples in order: keys, labels and (for files) their contents."""
    examples = images.splits[split]
    h = hashlib.sha256(json.dumps(images.tfds, sort_keys=True).encode() if images.kind == "tfds" else b"files")
    contents = [""] * len(examples)
    if images.kind not in ("tfds", "text"):  # TFDS records are immutable; a text example's key is its text
        with ThreadPoolExecutor(8) as pool:  # read now: a file may have changed since the split was made
            contents = list(pool.map(folders.file_digest, [e.key for e in examples]))
    if images.named_tasks:  # their records hold no labels (the targets come from the split)
        h.update(b"named tasks")
    for e, digest in zip(examples, contents, strict=True):
        h.update(f"{e.key}\t{e.label}\t{digest}\n".encode())
    return h.hexdigest()


def weights_digest(layer) -> str:
    """A digest of a layer's weight values (so any change of weights invalidates the cache)."""
    h = hashlib.sha256()
    for w in layer.weights:
        h.update(w.name.encode())
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()


def key_material(config: Config, model: keras.Model, images: data_lib.ImageData, split: str, image_size: int,
                 views: int, weights: str | None = None) -> dict:
    """Everything the features of `split` depend on."""
    d = config.data
    augmentation = {k: getattr(d, k) for k in ("flip", "rotation", "zoom", "translation", "contrast")}
    return {
        "format": FORMAT_VERSION,
        "split": split,
        "backbone": config.model.backbone,
        "cut_layer": config.model.cut_layer,
        "backbone_weights": weights or weights_digest(model.get_layer("backbone")),
        "image_size": image_size,
        "preprocess": model.get_layer("preprocess").mode,
        "precision": keras.mixed_precision.global_policy().name,
        "views": views,
        "augmentation": {**augmentation, "seed": config.seed} if views > 1 else None,
        "examples": examples_digest(images, split),
    }


def key_of(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def load(folder: Path, material: dict) -> FeatureSet | None:
    """The cache entry in `folder` if it is complete, intact and for `material`; else None (reported)."""
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        return None
    problem = None
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        problem = "it has no manifest (an interrupted build)"
    except (OSError, json.JSONDecodeError) as e:
        problem = f"its manifest is unreadable ({e})"
    if problem is None:
        records = folder / RECORDS
        if manifest.get("key") != material:
            problem = "its manifest is for different inputs"
        elif not records.is_file() or records.stat().st_size != manifest.get("bytes"):
            problem = f"{RECORDS} is missing or has the wrong size (a partial write)"
        elif folders.file_digest(str(records)) != manifest.get("sha256"):
            problem = f"{RECORDS} does not match its checksum (corrupted)"
    if problem:
        log.warning("Feature cache %s is not usable: %s; rebuilding it", folder, problem)
        return None
    return FeatureSet(folder, manifest["count"], manifest["views"], manifest["dim"], built=False)


def _extraction_input(config: Config, images: data_lib.ImageData, split: str, image_size: int, views: int,
                      batch_size: int) -> tf.data.Dataset:
    """Batches of (pixels of `views` views stacked along the batch axis [V*B, S, S, 3], labels [B])."""
    plain = dataclasses.replace(config.data, augment=False, cache="none")
    if images.kind == "text":  # strings in; no augmented views
        from tf_transfer.data import texts

        ds = texts.pipeline(images, split, plain, config.seed, batch_size=batch_size)
        return ds.map(lambda x, y: (x, tf.argmax(y, axis=-1, output_type=tf.int32)))
    ds = data_lib.pipeline(images, split, plain, image_size, config.seed, batch_size=batch_size)
    if images.named_tasks:  # the records keep the first label; named tasks' targets come from the split
        ds = ds.map(lambda x, y, w: (x, tf.zeros(tf.shape(x)[:1], tf.int32)))
    else:
        ds = ds.map(lambda x, y: (x, tf.argmax(y, axis=-1, output_type=tf.int32)))
    if views == 1:
        return ds
    base = tf.constant([config.seed, 0], tf.int64)

    def augmented(b, xy):
        x, y = xy
        seeds = [tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(base, v), b)
                 for v in range(views)]
        return tf.concat([data_lib.augment(x, s, config.data) for s in seeds], axis=0), y

    return ds.enumerate().map(augmented, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _serialize(features: np.ndarray, labels: np.ndarray) -> bytes:
    example = tf.train.Example(features=tf.train.Features(feature={
        "features": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[tf.io.serialize_tensor(features).numpy()])),
        "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=labels.tolist())),
    }))
    return example.SerializeToString()


def build(folder: Path, material: dict, extract, config: Config, images: data_lib.ImageData,
          split: str, image_size: int, views: int, batch_size: int) -> FeatureSet:
    """Compute and write one cache entry; the folder appears only when complete (see folders.atomic_dir)."""
    ds = _extraction_input(config, images, split, image_size, views, batch_size)
    log.info("Feature cache: computing the features of %d %s examples%s into %s", len(images.splits[split]), split,
             f" x {views} augmented views" if views > 1 else "", folder)
    folders.sweep_partials(folder.parent)
    start = time.monotonic()
    with folders.atomic_dir(folder, replace=True) as partial:
        done, dim = _write_records(partial / RECORDS, ds, extract, views, len(images.splits[split]), split)
        records = partial / RECORDS
        manifest = {"key": material, "count": done, "views": views, "dim": int(dim),
                    "bytes": records.stat().st_size, "sha256": folders.file_digest(str(records))}
        folders.write_json(partial / MANIFEST, manifest)
    seconds = time.monotonic() - start
    log.info("Feature cache: %d %s examples in %.1f s (%.0f views/s), %.1f MB", done, split, seconds,
             done * views / max(seconds, 1e-9), manifest["bytes"] / 1e6)
    return FeatureSet(folder, done, views, int(dim), built=True)


def _write_records(path: Path, ds, extract, views: int, count: int, split: str) -> tuple[int, int]:
    """Run the extractor over the dataset into one TFRecord file; returns (examples, feature size)."""
    start = last = time.monotonic()
    done, dim = 0, 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for x, y in ds:
            f = tf.cast(extract(x), tf.float32).numpy()
            n = int(y.shape[0])
            dim = f.shape[-1]
            f = f.reshape(views, n, dim).transpose(1, 0, 2)  # [B, V, D]: an example's views stay together
            writer.write(_serialize(f, y.numpy()))
            done += n
            if time.monotonic() - last > 10:
                last = time.monotonic()
                log.info("Feature cache: %d/%d %s examples (%.0f per s)", done, count, split,
                         done * views / (last - start))
    return done, dim


def ensure(model: keras.Model, config: Config, images: data_lib.ImageData, split: str, image_size: int,
           root: Path, views: int, batch_size: int, extract=None, weights: str | None = None) -> FeatureSet:
    """The features of a split: reused from `root` when an intact entry matches, else computed now.

    Several splits of one run can share `extract` (from `extractor`) and `weights` (the backbone's
    `weights_digest`), so the extractor is traced and the weights hashed once."""
    material = key_material(config, model, images, split, image_size, views, weights)
    folder = root / key_of(material)
    found = load(folder, material)
    if found:
        log.info("Feature cache: reusing %d %s feature vectors x %d view(s) from %s", found.count, split,
                 found.views, folder)
        return found
    extract = extract or extractor(model)
    # Inference needs no gradients or optimizer state: larger batches keep the cores busier.
    return build(folder, material, extract, config, images, split, image_size, views, max(batch_size, 64 // views))


def dataset(features: FeatureSet, num_classes: int, seed: int, shuffle_buffer: int = 0,
            batch_size: int = 32, targets: tuple[dict, dict] | None = None) -> tf.data.Dataset:
    """Batches of (features [B, D], one-hot labels), shuffled like the image pipeline when shuffle_buffer.
    With `targets` (named tasks: per-head targets and loss weights in split order, from
    data.datasets.targets), batches of (features, {head: targets}, {head: weights}).

    With several views, each epoch shows every example once, as one of its views drawn at random.
    """
    spec = {"features": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.VarLenFeature(tf.int64)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        f = tf.ensure_shape(tf.io.parse_tensor(ex["features"], tf.float32), [None, features.views, features.dim])
        return f, tf.cast(tf.sparse.to_dense(ex["labels"]), tf.int32)

    ds = tf.data.TFRecordDataset(str(features.path / RECORDS)).map(parse).unbatch()
    if targets is not None:  # records are in split order: the i-th vector is the i-th example's
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.range(features.count))).map(lambda fy, i: (fy[0], i))
    ds = ds.cache()
    if shuffle_buffer:  # the same shuffle, at the same place, as data.pipeline's
        ds = ds.shuffle(min(shuffle_buffer, features.count), seed=seed, reshuffle_each_iteration=True)
    if features.views > 1:
        picks = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, picks)).map(lambda fy, r: (fy[0][r % features.views], fy[1]))
    else:
        ds = ds.map(lambda f, y: (f[0], y))
    if targets is None:
        ds = ds.batch(batch_size).map(lambda f, y: (f, tf.one_hot(y, num_classes)), num_parallel_calls=AUTOTUNE)
    else:
        ys, ws = ({h: tf.constant(v) for h, v in d.items()} for d in targets)
        ds = ds.batch(batch_size).map(lambda f, i: (f, {h: tf.gather(v, i) for h, v in ys.items()},
                                                    {h: tf.gather(v, i) for h, v in ws.items()}))
    # Keras iterates a dataset of unknown length differently (epoch 2 on no longer matches the image
    # pipeline's batches); the manifest knows the length.
    steps = -(-features.count // batch_size)
    return ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(AUTOTUNE)
