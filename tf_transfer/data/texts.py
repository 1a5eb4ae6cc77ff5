"""Labelled texts in, tf.data pipelines out: CSV files, folders of .txt files per class (the aclImdb
layout), TFDS text datasets; the same seeded stratified splits and saved manifests as images.

An example's key is its text (the split manifest in the run folder holds the texts themselves, so a
resumed run and a re-export see exactly what training saw). Rows with a bad text or label are
reported with their line number and skipped; ``--strict`` fails instead.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import tensorflow as tf

from tf_transfer import fs
from tf_transfer.config import DataConfig
from tf_transfer.data import datasets, text_files
from tf_transfer.data.datasets import ImageData
from tf_transfer.data.sources import _SPLIT_ALIASES, SPLITS, Example
from tf_transfer.errors import DataError

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
KIND = "text"
UNLABELLED_FOLDERS = ("unsup",)  # aclImdb's unlabelled reviews sit beside the class folders
MAX_TEXT_BYTES = text_files.MAX_TEXT_BYTES  # a longer cell, line or file: reported and skipped


def _csv_rows(path, text_column: str, label_column: str, skipped: dict) -> list[tuple[str, str, str]]:
    """(split, text, label) of a CSV with a header naming the text and label columns (and maybe split)."""
    records = text_files.csv_records(path, skipped)
    try:
        header = [c.strip() for c in next(records, (0, []))[1]]
        lowered = [c.lower() for c in header]
        missing = [c for c in (text_column, label_column) if c.lower() not in lowered]
        if missing:
            raise DataError(f"{path}: no column {', '.join(repr(c) for c in missing)}; its header is "
                            f"{','.join(header) or '(empty)'} (set --text-column and --label-column)")
        t, y = lowered.index(text_column.lower()), lowered.index(label_column.lower())
        s = lowered.index("split") if "split" in lowered else None
        out = []
        for line, row in records:
            problem = _bad_row(row, t, y, s)
            if problem:
                skipped[f"{path}, line {line}"] = problem
                continue
            split = _SPLIT_ALIASES.get(row[s].strip().lower(), "all") if s is not None and row[s].strip() else "all"
            out.append((split, row[t], row[y].strip()))
    except csv.Error as e:
        raise DataError(f"{path}: the CSV cannot be parsed ({e})") from None
    return out


def _bad_row(row: list[str], t: int, y: int, s: int | None) -> str:
    if not any(c.strip() for c in row):
        return "empty line"
    if len(row) <= max(t, y):
        return f"expected at least {max(t, y) + 1} columns, got {len(row)}"
    if not row[y].strip():
        return "no label"
    if any(not _utf8(c) for c in (row[t], row[y])):
        return "not valid UTF-8"
    if len(row[t].encode()) > MAX_TEXT_BYTES:
        return f"the text is over {MAX_TEXT_BYTES >> 20} MB"
    if s is not None and len(row) > s and row[s].strip() and row[s].strip().lower() not in _SPLIT_ALIASES:
        return f"unknown split {row[s]!r}; expected train, val or test"
    return ""


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _folder_rows(root, skipped: dict) -> list[tuple[str, str, str]]:
    """(split, text, label) of root/<class>/*.txt or root/{train,test,...}/<class>/*.txt."""
    root = fs.path(root)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    names = {d.name.lower() for d in subdirs}
    layout = {_SPLIT_ALIASES[d.name.lower()]: d for d in subdirs} if "train" in names and names <= set(
        _SPLIT_ALIASES) else {"all": root}
    out = []
    for split, folder in layout.items():
        for cls in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))):
            if cls.name in UNLABELLED_FOLDERS:
                log.info("Skipping %s: unlabelled texts", cls)
                continue
            for file in text_files.files_in(cls, root, ".txt", skipped):
                try:
                    raw = text_files.read_capped(file)
                    if raw is None:
                        raise ValueError(f"over {MAX_TEXT_BYTES >> 20} MB")
                    out.append((split, raw.decode("utf-8"), cls.name))
                except (OSError, UnicodeDecodeError, ValueError) as e:
                    skipped[str(file)] = f"cannot be read as UTF-8 text ({e})"
    if not out:
        raise DataError(f"{root} has no .txt files in class folders; expected {root}/<class>/<files>.txt "
                        "(or train/ and test/ folders holding class folders)")
    return out


def _tfds_rows(name: str, data_dir: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:
        raise DataError(f"unknown TFDS dataset {name!r} ({e})") from None
    keys = builder.info.supervised_keys
    if not keys or not hasattr(builder.info.features[keys[1]], "names"):
        raise DataError(f"TFDS dataset {name!r} has no (text, label) supervised keys with class names")
    names = list(builder.info.features[keys[1]].names)
    out = []
    for tfds_split in sorted(builder.info.splits.keys() if builder.info.splits else ["train", "test"]):
        ours = _SPLIT_ALIASES.get(tfds_split.lower())
        if ours is None:
            continue
        try:
            ds = tfds.load(name, split=tfds_split, data_dir=data_dir or None, as_supervised=True)
        except Exception as e:
            raise DataError(f"TFDS could not load {name!r} split {tfds_split!r}: {e}. Without internet access, "
                            "prepare it elsewhere and pass --tfds-data-dir, or use csv:PATH.") from e
        out += [(ours, t.decode("utf-8", "replace"), names[int(y)]) for t, y in ds.as_numpy_iterator()]
    return out, names


def read(cfg: DataConfig) -> tuple[list[tuple[str, str, str]], list[str] | None, dict[str, str]]:
    """(rows of (split, text, label), the dataset's class names if it has them, skipped rows or files)."""
    source, skipped = cfg.source, {}
    names = None
    if source.startswith("csv:"):
        rows = _csv_rows(source[len("csv:"):], cfg.text_column, cfg.label_column, skipped)
    elif source.startswith("tfds:"):
        rows, names = _tfds_rows(source[len("tfds:"):], cfg.tfds_data_dir)
    elif source and fs.path(source).is_dir():
        rows = _folder_rows(source, skipped)
    else:
        raise DataError(f"--data {source!r}: text data is 'csv:PATH' (with {cfg.text_column!r} and "
                        f"{cfg.label_column!r} columns), a folder of .txt files per class, or 'tfds:NAME'")
    return rows, names, skipped


def prepare(cfg: DataConfig, seed: int) -> ImageData:
    """Read the texts, report bad rows, split (seeded, stratified) and check the classes."""
    source = cfg.source
    rows, names, skipped = read(cfg)
    if skipped:
        listing = "\n".join(f"  {where}: {why}" for where, why in list(skipped.items())[:20])
        if cfg.strict:
            raise DataError(f"{len(skipped)} row(s) or file(s) cannot be used (--strict):\n{listing}")
        log.warning("Skipped %d bad row(s) or file(s) (all listed in the run's skipped_files.csv):\n%s",
                    len(skipped), listing)
    class_names = names or sorted({label for _, _, label in rows})
    index = {name: i for i, name in enumerate(class_names)}
    partitions: dict[str, list[Example]] = {}
    for split, text, label in rows:
        partitions.setdefault(split, []).append(Example(text, index[label]))
    if "all" in partitions and len(partitions) > 1:
        partitions.setdefault("train", []).extend(partitions.pop("all"))
    splits = datasets.split_examples(partitions, cfg.val_fraction, cfg.test_fraction, seed)
    datasets.check_classes(class_names, splits, source)
    return ImageData(class_names, splits, skipped, source, KIND)


def pipeline(data: ImageData, split: str, cfg: DataConfig, seed: int, training: bool = False,
             batch_size: int | None = None, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Batches of (strings [B], one-hot labels [B, C]) for one split; only training is shuffled."""
    examples = data.splits[split]
    if not examples:
        raise DataError(f"the {split} split is empty")
    ds = tf.data.Dataset.from_tensor_slices(([e.key for e in examples], [e.label for e in examples]))
    if shard:
        ds = ds.shard(*shard)
    batch_size = batch_size or cfg.batch_size
    if training:
        ds = ds.shuffle(min(cfg.shuffle_buffer * 8, len(examples)), seed=seed, reshuffle_each_iteration=True)
        count = len(examples) if not shard else (len(examples) - shard[1] + shard[0] - 1) // shard[0]
        ds = _similar_lengths(ds, batch_size, seed, -(-count // batch_size))
    else:
        ds = ds.batch(batch_size)
    n = data.num_classes
    return ds.map(lambda x, y: (x, tf.one_hot(y, n)), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _similar_lengths(ds: tf.data.Dataset, batch_size: int, seed: int, batches: int,
                     window: int = 32) -> tf.data.Dataset:
    """Batches of shuffled texts of similar length, in shuffled order: the tokenizer pads to the longest
    text of a batch, so this spends less compute on padding. Texts are sorted by length within windows of
    `window` batches; the batches then are shuffled again. Every text still comes once per epoch."""
    def by_length(x, y):
        order = tf.argsort(tf.strings.length(x), stable=True)
        return tf.gather(x, order), tf.gather(y, order)

    ds = ds.batch(batch_size * window).map(by_length).unbatch().batch(batch_size)
    ds = ds.shuffle(window, seed=seed, reshuffle_each_iteration=True)
    return ds.apply(tf.data.experimental.assert_cardinality(batches))


def sample_texts(data: ImageData, count: int = 8) -> list[str]:
    """A few texts of the test split (else train) for export verification and warm-up."""
    split = "test" if data.splits["test"] else "train"
    return [e.key for e in data.splits[split][:count]]


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """Texts to predict: a .txt file is one text (its first MB: a model reads far less), a .csv file's
    text column one text per row (rows over the limits are left out, with a warning)."""
    path = fs.path(path)
    if path.suffix.lower() != ".csv":
        with path.open("rb") as f:
            return [f.read(MAX_TEXT_BYTES).decode("utf-8", "replace")]
    skipped: dict[str, str] = {}
    found = _csv_texts(path, text_column, skipped, keep_empty=True)
    for where, why in list(skipped.items())[:20]:
        log.warning("Left out %s: %s", where, why)
    return found


def unlabelled_texts(cfg: DataConfig) -> tuple[list[str], dict[str, str]]:
    """Every text of ``cfg.source``, labels ignored (pre-training): ``csv:PATH`` (its text column; other
    columns such as a label are not read), a ``.txt`` file (one text per line), a folder of ``.txt`` files
    at any depth (one text per file, aclImdb's unsup/ included) or ``tfds:NAME`` (every split's texts).
    Returns (texts, skipped: {where: why})."""
    source, text_column, skipped = cfg.source, cfg.text_column, {}
    path = fs.path(source[len("csv:"):] if source.startswith("csv:") else source)
    if source.startswith("tfds:"):
        texts = [t for _, t, _ in _tfds_rows(source[len("tfds:"):], cfg.tfds_data_dir)[0]]
    elif source.startswith("csv:") or path.suffix.lower() == ".csv":
        texts = _csv_texts(path, text_column, skipped)
    elif path.is_file():
        texts = []
        for number, raw in text_files.lines(path):
            where = f"{path}, line {number}"
            if raw is None:
                skipped[where] = f"the line is over {MAX_TEXT_BYTES >> 20} MB"
            else:
                _keep(raw.decode("utf-8", "replace").rstrip("\r"), where, texts, skipped)
    elif path.is_dir():
        texts = []
        for file in text_files.files_in(path, path, ".txt", skipped, recursive=True):
            raw = text_files.read_capped(file)
            if raw is None:
                skipped[str(file)] = f"the file is over {MAX_TEXT_BYTES >> 20} MB"
            else:
                _keep(raw.decode("utf-8", "replace"), str(file), texts, skipped)
    else:
        raise DataError(f"--data {source!r}: unlabelled texts are csv:PATH (with a {text_column!r} column), a .txt "
                        "file of one text per line, a folder of .txt files or tfds:NAME")
    if not texts:
        raise DataError(f"--data {source}: no usable text found ({len(skipped)} empty or unusable)")
    return texts, skipped


def _keep(text: str, where: str, texts: list[str], skipped: dict[str, str]) -> None:
    if not text.strip():
        skipped[where] = "empty"
    elif len(text.encode("utf-8", "replace")) > MAX_TEXT_BYTES:
        skipped[where] = f"the text is over {MAX_TEXT_BYTES >> 20} MB"
    else:
        texts.append(text)


def _csv_texts(path, text_column: str, skipped: dict[str, str], keep_empty: bool = False) -> list[str]:
    texts: list[str] = []
    records = text_files.csv_records(path, skipped, errors="replace")
    try:
        header = [c.strip().lower() for c in next(records, (0, []))[1]]
        if text_column.lower() not in header:
            raise DataError(f"{path}: no column {text_column!r}; its header is {','.join(header) or '(empty)'} "
                            "(set --text-column)")
        t = header.index(text_column.lower())
        for line, row in records:
            where = f"{path}, line {line}"
            if len(row) <= t:
                skipped[where] = f"expected at least {t + 1} columns, got {len(row)}"
            elif keep_empty and not row[t].strip():
                texts.append(row[t])
            else:
                _keep(row[t], where, texts, skipped)
    except csv.Error as e:
        raise DataError(f"{path}: the CSV cannot be parsed ({e})") from None
    return texts


__all__ = ["KIND", "SPLITS", "pipeline", "prepare", "read_texts", "sample_texts", "unlabelled_texts"]
