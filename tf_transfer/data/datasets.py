"""Labelled images in, tf.data pipelines out: checks, seeded stratified splits, saved splits, pipelines."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_transfer import folders
from tf_transfer import tasks as tasks_lib
from tf_transfer.config import DataConfig
from tf_transfer.data import images, quality, sources
from tf_transfer.data.sources import SPLITS, DataError, Example
from tf_transfer.folders import RunDir
from tf_transfer.tasks import Task

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE

__all__ = ["DataError", "ImageData", "load_split", "pipeline", "prepare", "split_examples"]


@dataclass
class ImageData:
    """The resolved, checked and split data of a run."""

    class_names: list[str]
    splits: dict[str, list[Example]]  # train / val / test (val and test may be empty)
    skipped: dict[str, str] = field(default_factory=dict)
    source: str = ""
    kind: str = "folder"
    tfds: dict | None = None
    checks: dict = field(default_factory=dict)  # what prepare found: duplicates, files outside the data folder
    named_tasks: list[Task] = field(default_factory=list)  # several heads (CSV label columns); empty: one task

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def tasks(self) -> list[Task]:
        """The heads to train: the named tasks, or one unnamed task over the class names."""
        return self.named_tasks or [Task("", tuple(self.class_names))]

    def targets(self, e: Example) -> tuple:
        """An example's class indices per task (None: no label for that task)."""
        return e.targets if self.named_tasks else ((e.label,),)

    def counts(self, task: int = 0) -> dict[str, dict[str, int]]:
        """{class name: {split: examples labelled with it}} for one task."""
        names = self.tasks[task].class_names
        out = {name: dict.fromkeys(SPLITS, 0) for name in names}
        for split, examples in self.splits.items():
            labels = Counter(c for e in examples for c in (self.targets(e)[task] or ()))
            for label, n in labels.items():
                out[names[label]][split] = n
        return out

    def class_weights(self, task: int = 0) -> dict[int, float]:
        """Balanced weights n / (classes * n_c) from the training split's labelled examples of a task."""
        counts = Counter(t[0] for e in self.splits["train"] if (t := self.targets(e)[task]))
        total, n = sum(counts.values()), self.tasks[task].num_classes
        return {c: total / (n * counts[c]) for c in range(n) if counts[c]}

    def summary_table(self) -> str:
        return "\n".join(self._task_table(i) for i in range(len(self.tasks)))

    def _task_table(self, task: int) -> str:
        counts, t = self.counts(task), self.tasks[task]
        width = max(len("class"), len("(no label)"), *(len(n) for n in t.class_names))
        title = [f"task {t.name} ({'multi-label' if t.multi_label else 'single-label'}):"] if t.name else []
        lines = [*title, f"{'class':<{width}}  {'train':>6} {'val':>6} {'test':>6}"]
        for name in t.class_names:
            c = counts[name]
            lines.append(f"{name:<{width}}  {c['train']:>6} {c['val']:>6} {c['test']:>6}")
        if t.name:
            none = {s: sum(self.targets(e)[task] is None for e in self.splits[s]) for s in SPLITS}
            lines.append(f"{'(no label)':<{width}}  {none['train']:>6} {none['val']:>6} {none['test']:>6}")
        totals = {s: len(self.splits[s]) for s in SPLITS}
        lines.append(f"{'total':<{width}}  {totals['train']:>6} {totals['val']:>6} {totals['test']:>6}")
        return "\n".join(lines)

    def save(self, run: RunDir) -> None:
        """Save the split manifest, class counts and skipped-file report into a run folder."""
        rows = [[split, e.label, self.class_names[e.label] if e.label >= 0 else "", e.key, e.digest,
                 *(tasks_lib.format_target(t, x) for t, x in zip(self.named_tasks, e.targets, strict=True))]
                for split in SPLITS for e in self.splits[split]]
        summary = {"source": self.source, "kind": self.kind, "tfds": self.tfds, "class_names": self.class_names,
                   "counts": self.counts(), "num_skipped": len(self.skipped), "checks": self.checks,
                   "tasks": [t.to_dict() for t in self.named_tasks],
                   "task_counts": {t.name: self.counts(i) for i, t in enumerate(self.named_tasks)}}
        run.write_split(summary, rows, self.skipped, [t.name for t in self.named_tasks])


def split_examples(
    partitions: dict[str, list[Example]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Example]]:
    """Stratified, seeded split. Given val/test partitions are kept; missing ones are carved per class
    from the training pool (or from the unsplit pool), so that each class keeps at least one training image."""
    pool = list(partitions.get("train", [])) + list(partitions.get("all", []))
    fractions = {s: f for s, f in (("test", test_fraction), ("val", val_fraction)) if s not in partitions}
    out = {s: list(partitions.get(s, [])) if s != "train" else [] for s in SPLITS}
    by_class: dict[int, list[Example]] = {}
    for e in pool:
        by_class.setdefault(e.label, []).append(e)
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda e: e.key)
        random.Random(f"{seed}:{label}").shuffle(members)
        n = len(members)
        take = {s: int(n * f + 0.5) for s, f in fractions.items()}  # round half up
        while n - sum(take.values()) < 1 and any(take.values()):  # keep one for training
            biggest = max(take, key=take.get)
            take[biggest] -= 1
        start = 0
        for s in ("test", "val"):
            k = take.get(s, 0)
            out[s].extend(members[start:start + k])
            start += k
        out["train"].extend(members[start:])
    for s in ("val", "test"):
        out[s].sort(key=lambda e: (e.label, e.key))
    # Training examples in a seeded random order, not grouped by class: the pipelines' shuffle buffers
    # (and the feature cache, which keeps this order) then mix classes even when the split is larger than
    # the buffer. Grouped by class, a 2,048-example buffer over 16,000 texts fed the head one class at a time.
    out["train"].sort(key=lambda e: hashlib.sha256(f"{seed}:{e.key}".encode()).hexdigest())
    return out


def _tfds_order(e: Example) -> tuple[str, int]:
    split, index = e.key.rsplit(":", 1)
    return split, int(index)


def check_classes(class_names: list[str], splits: dict[str, list[Example]], location: str) -> None:
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise DataError(f"{location}: need at least 2 classes to train a classifier, found {found}")
    totals = Counter(e.label for examples in splits.values() for e in examples)
    small = [f"{class_names[c]} ({totals.get(c, 0)})" for c in range(len(class_names)) if totals.get(c, 0) < 2]
    if small:
        raise DataError(f"{location}: every class needs at least 2 readable examples; too few in: {', '.join(small)}")
    train = Counter(e.label for e in splits["train"])
    untrained = [class_names[c] for c in range(len(class_names)) if not train.get(c)]
    if untrained:
        raise DataError(f"{location}: classes {', '.join(untrained)} have no training examples (all of them "
                        "are in the given val/test splits); every class needs at least one")


def _check_tasks(data: ImageData, location: str) -> None:
    """Named tasks: each needs two classes (one label, multi-label) and training examples of every class."""
    for i, task in enumerate(data.tasks):
        if task.num_classes < (1 if task.multi_label else 2):
            raise DataError(f"{location}: task {task.name!r} has {task.num_classes} class(es) "
                            f"({', '.join(task.class_names) or 'no labelled rows'}); a single-label task needs at "
                            "least 2, a multi-label task at least 1")
        counts = data.counts(i)
        untrained = [name for name in task.class_names if not counts[name]["train"]]
        if untrained:
            raise DataError(f"{location}: task {task.name!r}: classes {', '.join(untrained)} have no training "
                            "examples (all are in the given val/test splits); every class needs at least one")


def _check_outside(catalog: sources.Catalog, strict: bool) -> None:
    """Files that resolve outside the data folder (symlinks, '..' paths in a manifest): warn, or refuse."""
    if not catalog.outside:
        return
    listing = "\n".join(f"  {sources.printable(p)}" for p in catalog.outside[:10])
    message = f"{len(catalog.outside)} file(s) lie outside {catalog.location} (symlinks or '..' paths):\n{listing}"
    if strict:
        raise DataError(f"{message}\n--strict refuses files outside the data folder")
    log.warning("%s", message)


def prepare(cfg: DataConfig, seed: int) -> ImageData:
    """Resolve the source, find unreadable and duplicate files, split, and check the classes."""
    catalog = sources.resolve(cfg.source, cfg.tfds_data_dir, cfg.tasks)
    _check_outside(catalog, cfg.strict)
    skipped = dict(catalog.skipped)
    if catalog.kind != "tfds":  # TFDS validates images when it prepares a dataset
        paths = [e.key for examples in catalog.partitions.values() for e in examples]
        log.info("Checking %d files in %s ...", len(paths), catalog.location)
        skipped.update(images.find_unreadable(paths, cfg.max_image_pixels))
    if skipped and cfg.strict:
        listing = "\n".join(f"  {p}: {r}" for p, r in sorted(skipped.items()))
        raise DataError(f"{len(skipped)} file(s) cannot be used (--strict):\n{listing}")
    partitions = {s: [e for e in ex if e.key not in skipped] for s, ex in catalog.partitions.items()}
    duplicates = {}
    if catalog.kind != "tfds":
        partitions = quality.with_digests(partitions)
        groups = quality.find_duplicates(partitions)
        duplicates = quality.report(groups, catalog.class_names)
        partitions = quality.dedupe(partitions, groups) if cfg.dedupe and groups else partitions
    splits = split_examples(partitions, cfg.val_fraction, cfg.test_fraction, seed)
    if catalog.kind == "tfds":  # list TFDS examples in the order the pipeline reads them
        for examples in splits.values():
            examples.sort(key=_tfds_order)
    data = ImageData(catalog.class_names, splits, skipped, cfg.source, catalog.kind, catalog.tfds,
                     {"duplicates": duplicates, "outside": [sources.printable(p) for p in catalog.outside]},
                     named_tasks=catalog.tasks)
    if data.named_tasks:
        _check_tasks(data, catalog.location)
    else:
        check_classes(catalog.class_names, splits, catalog.location)
    return data


def load_split(run: RunDir) -> ImageData:
    """The data of an earlier run, exactly as it was split (for --resume and re-export)."""
    summary, rows, skipped = run.read_split()
    tasks = [Task.from_dict(t) for t in summary.get("tasks", [])]
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for i, row in enumerate(rows, start=2):
        where = f"{run.path / RunDir.SPLIT_MANIFEST}, line {i}"
        targets = tuple(tasks_lib.parse_target(t, row.get(f"task:{t.name}") or "", where) for t in tasks)
        splits[row["split"]].append(Example(row["key"], int(row["label"]), row.get("sha256") or "", targets))
    return ImageData(summary["class_names"], splits, skipped, summary["source"], summary["kind"], summary["tfds"],
                     named_tasks=tasks)


def augment(batch: tf.Tensor, seed: tf.Tensor, cfg: DataConfig) -> tf.Tensor:
    """Random flip, one combined rotation/zoom/translation warp, and contrast, on a float batch.

    The three geometric changes are composed into a single projective transform per image (one
    resampling pass instead of three), and all randomness is stateless, drawn from `seed` [2].
    """
    shape = tf.shape(batch)
    n, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 7)

    def uniform(i, low, high):
        return tf.random.stateless_uniform([n], seeds[i], low, high)

    if cfg.flip in ("horizontal", "horizontal_and_vertical"):
        flip = uniform(0, 0.0, 1.0) < 0.5
        batch = tf.where(flip[:, None, None, None], tf.reverse(batch, axis=[2]), batch)
    if cfg.flip in ("vertical", "horizontal_and_vertical"):
        flip = uniform(1, 0.0, 1.0) < 0.5
        batch = tf.where(flip[:, None, None, None], tf.reverse(batch, axis=[1]), batch)
    if cfg.rotation or cfg.zoom or cfg.translation:
        angle = uniform(2, -cfg.rotation, cfg.rotation) * 2.0 * np.pi
        scale = 1.0 + uniform(3, -cfg.zoom, cfg.zoom)  # > 1 shows more of the image (zoom out)
        tx = uniform(4, -cfg.translation, cfg.translation) * w
        ty = uniform(5, -cfg.translation, cfg.translation) * h
        cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        # Output pixel (x, y) samples input (cos*(x-cx) - sin*(y-cy) + cx - tx, sin*(x-cx) + cos*(y-cy) + cy - ty).
        zeros = tf.zeros_like(cos)
        transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy - tx,
                               sin, cos, cy - sin * cx - cos * cy - ty, zeros, zeros], axis=1)
        batch = tf.raw_ops.ImageProjectiveTransformV3(
            images=batch, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="REFLECT")
    if cfg.contrast:
        factor = uniform(6, 1.0 - cfg.contrast, 1.0 + cfg.contrast)[:, None, None, None]
        mean = tf.reduce_mean(batch, axis=[1, 2], keepdims=True)
        batch = tf.clip_by_value((batch - mean) * factor + mean, 0.0, 255.0)
    return batch


def encoded_images(data: ImageData, examples: list[Example]) -> tf.data.Dataset:
    """(encoded bytes, label) in the order of `examples`."""
    if data.kind != "tfds":
        keys = [e.key for e in examples]
        labels = [e.label for e in examples]
        ds = tf.data.Dataset.from_tensor_slices((keys, labels))
        return ds.map(lambda path, y: (tf.io.read_file(path), y), num_parallel_calls=AUTOTUNE)
    import tensorflow_datasets as tfds

    t = data.tfds
    parts = []
    keys = sorted(_tfds_order(e) for e in examples)
    for tfds_split in sorted({split for split, _ in keys}):
        wanted = [i for split, i in keys if split == tfds_split]
        mask = [False] * (wanted[-1] + 1)
        for i in wanted:
            mask[i] = True
        ds = tfds.load(t["name"], split=tfds_split, data_dir=t["data_dir"] or None, shuffle_files=False,
                       decoders={t["image_key"]: tfds.decode.SkipDecoding()})
        wanted_mask = tf.constant(mask)
        # indices past the last wanted one are never wanted
        ds = ds.take(len(mask)).enumerate().filter(lambda i, ex, m=wanted_mask: tf.gather(m, i))
        parts.append(ds.map(lambda i, ex: (ex[t["image_key"]], tf.cast(ex[t["label_key"]], tf.int32))))
    ds = parts[0]
    for p in parts[1:]:
        ds = ds.concatenate(p)
    return ds


def cache_key(examples: list[Example], image_size: int) -> str:
    """A key over the examples (paths, labels and contents: the digest, else size and mtime) and the size."""
    h = hashlib.sha256(f"{image_size}\n".encode())
    for e in examples:
        content = e.digest
        if not content and "://" not in e.key and os.path.exists(e.key):
            stat = os.stat(e.key)
            content = f"{stat.st_size}:{stat.st_mtime_ns}"
        h.update(f"{e.key}\t{e.label}\t{content}\n".encode())
    return h.hexdigest()[:16]


_CACHE_LOCKS: dict[str, object] = {}  # open lock files, held for the life of the process


def disk_cache_prefix(folder: Path, name: str) -> str:
    """The prefix for tf.data's on-disk cache of `name` in `folder`, safe against kills and concurrency.

    A complete cache (its .index exists) is shared. Otherwise this process takes an exclusive lock on
    the prefix: holding it, it removes what a killed writer left (tf.data's lockfile would make every
    later run fail) and writes the cache; if another live process holds it, this one writes a private
    cache whose name lets folders.sweep_partials remove it once the process is gone."""
    import fcntl

    prefix = str(folder / name)
    if os.path.exists(prefix + ".index"):
        return prefix
    lock = open(prefix + ".owner", "a")  # kept open: the lock lasts as long as the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        folders.sweep_partials(folder)
        private = str(folders.partial_path(folder / name))
        log.info("Another run is writing the image cache %s; this run caches privately in %s", prefix, private)
        return private
    _CACHE_LOCKS[prefix] = lock
    for stale in folder.glob(f"{name}_*.lockfile"):
        stale.unlink(missing_ok=True)
    for stale in folder.glob(f"{name}*.tempstate*"):
        stale.unlink(missing_ok=True)
    return prefix


def _available_memory() -> int:
    """Bytes of memory available to new allocations (Linux /proc/meminfo; else physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cache_place(cache: str, data: ImageData, image_size: int) -> str:
    """Where decoded images are cached: 'memory', 'none' or a folder; 'auto' picks memory when all splits
    fit in half the available memory, else a folder under the tf_transfer cache when the disk has room."""
    if cache != "auto":
        return cache
    needed = sum(len(v) for v in data.splits.values()) * image_size * image_size * 3
    if needed <= _available_memory() // 2:
        return "memory"
    folder = folders.cache_home() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free > needed * 1.2:
        log.info("Decoded images (%.1f GB) do not fit in memory; caching them in %s", needed / 1e9, folder)
        return str(folder)
    log.warning("Decoded images (%.1f GB) fit neither in memory nor on disk; decoding every epoch", needed / 1e9)
    return "none"


def targets(data: ImageData, examples: list[Example], cfg: DataConfig) -> tuple[dict, dict]:
    """Per head: multi-hot targets [N, C] and loss weights [N]: 0 where an example has no label for the
    task (masked out of its loss and metrics), else 1 or the class weight of a single-label task."""
    use_weights = tasks_lib.per_task(cfg.task_class_weights, data.tasks, "--task-class-weights", bool,
                                     cfg.class_weights)
    ys, ws = {}, {}
    for i, task in enumerate(data.tasks):
        y = np.zeros((len(examples), task.num_classes), np.float32)
        w = np.zeros(len(examples), np.float32)
        weights = data.class_weights(i) if use_weights[task.name] and not task.multi_label else {}
        for row, e in enumerate(examples):
            target = data.targets(e)[i]
            if target is not None:
                y[row, list(target)] = 1.0
                w[row] = weights.get(target[0], 1.0)
        ys[task.head], ws[task.head] = y, w
    return ys, ws


def labelled(data: ImageData, examples: list[Example], cfg: DataConfig):
    """The batch map from (pixels uint8, labels or example indices) to what the model trains on:
    (float32 pixels, one-hot labels) with one task; (pixels, {head: targets}, {head: weights}) with named tasks."""
    if not data.named_tasks:
        n = data.num_classes
        return lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, n))
    ys, ws = targets(data, examples, cfg)
    ys, ws = ({h: tf.constant(v) for h, v in d.items()} for d in (ys, ws))
    return lambda x, i: (tf.cast(x, tf.float32), {h: tf.gather(v, i) for h, v in ys.items()},
                         {h: tf.gather(v, i) for h, v in ws.items()})


def pipeline(
    data: ImageData,
    split: str,
    cfg: DataConfig,
    image_size: int,
    seed: int,
    training: bool = False,
    batch_size: int | None = None,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 pixels 0-255 [B, S, S, 3], one-hot labels) for one split; with named tasks
    (pixels, {head: targets}, {head: loss weights}) (see `labelled`).

    Read and decode run in parallel; decoded, resized uint8 images are cached; only the
    training split is shuffled and augmented.
    """
    examples = data.splits[split]
    if not examples:
        raise DataError(f"the {split} split is empty")
    # With named tasks the pipeline carries each example's index, and the batch looks its targets up.
    labels = list(range(len(examples))) if data.named_tasks else [e.label for e in examples]
    if data.kind == "tfds":
        ds = encoded_images(data, examples)
        if data.named_tasks:  # pragma: no cover - TFDS sources have one task
            raise DataError("named tasks need a CSV manifest")
        ds = ds.map(lambda b, y: (images.decode_and_resize(b, image_size), y), num_parallel_calls=AUTOTUNE)
    else:  # read and decode in one parallel step
        ds = tf.data.Dataset.from_tensor_slices(([e.key for e in examples], labels))
        if shard:  # by file: each worker decodes only its share of the files
            ds = ds.shard(*shard)
        ds = ds.map(lambda path, y: (images.decode_and_resize(tf.io.read_file(path), image_size), y),
                    num_parallel_calls=AUTOTUNE)
    where = cache_place(cfg.cache, data, image_size)
    if where == "memory":
        ds = ds.cache()
    elif where != "none":
        folder = Path(where).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        key = cache_key(examples, image_size) + (f"-shard{shard[1]}of{shard[0]}" if shard else "")
        ds = ds.cache(disk_cache_prefix(folder, f"{split}-{key}"))
    if training:
        ds = ds.shuffle(min(cfg.shuffle_buffer, len(examples)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size or cfg.batch_size).map(labelled(data, examples, cfg), num_parallel_calls=AUTOTUNE)
    if training and cfg.augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))
        ds = ds.map(lambda xy, s: (augment(xy[0], s, cfg), *xy[1:]), num_parallel_calls=AUTOTUNE)
    if shard and data.kind != "tfds":
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)
