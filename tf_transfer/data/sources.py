"""Resolve a data source (image folder, CSV manifest, TFDS name, demo) into a catalogue of labelled examples."""

from __future__ import annotations

import csv
import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tf_transfer import fs
from tf_transfer.errors import DataError
from tf_transfer.fs import GPath

log = logging.getLogger(__name__)
__all__ = ["SPLITS", "Catalog", "DataError", "Example", "resolve"]

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


@dataclass(frozen=True)
class Example:
    key: str  # a file path, or "<tfds split>:<index>" for TFDS
    label: int
    digest: str = ""  # SHA-256 of the file's bytes, once the data check has read it


@dataclass
class Catalog:
    """What a source resolved to, before the split and the readability check."""

    kind: str  # "folder" | "csv" | "tfds"
    location: str
    class_names: list[str]
    partitions: dict[str, list[Example]]  # "all" for an unsplit pool, else train/val/test
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason
    tfds: dict | None = None  # name, data_dir, image_key, label_key
    outside: list[str] = field(default_factory=list)  # files that resolve outside the data root (symlinks, ../)


def printable(path: str | Path) -> str:
    """A path as text that can be logged and written to UTF-8 files (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # bytes that were not UTF-8, kept as surrogates by the file system decoding
        return False


def _outside(files: list[str], root: Path | GPath) -> list[str]:
    """The files whose real location is not under root (followed symlinks, '..' in a manifest)."""
    if isinstance(root, GPath):  # no symlinks there: only '..' and other locations can leave the root
        return [f for f in files if ".." in PurePosixPath(f).parts or not fs.path(f).is_relative_to(root)]
    base = root.resolve()
    return [f for f in files if not Path(f).resolve().is_relative_to(base)]


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def _files_under(folder: Path | GPath) -> list[Path | GPath]:
    """Every non-hidden file below folder (nested folders included), sorted."""
    return sorted(p for p in fs.files_under(folder) if all(map(_visible, p.relative_to(folder).parts)))


def _split_layout(root: Path | GPath, subdirs: list) -> dict | None:
    """{split: folder} when root holds train/val/test folders rather than class folders."""
    names = {d.name.lower() for d in subdirs}
    if "train" in names and all(n in _SPLIT_ALIASES for n in names):
        return {_SPLIT_ALIASES[d.name.lower()]: d for d in subdirs}
    return None


def _class_folders(folder: Path | GPath) -> list:
    return sorted((d for d in folder.iterdir() if d.is_dir() and _visible(d.name)), key=lambda d: d.name)


def scan_folder(root: str | Path) -> Catalog:
    """An image folder: root/<class>/<files> or root/{train,val,test}/<class>/<files> (local or a URL)."""
    root = fs.path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; expected a folder with one subfolder per class")
    if not root.is_dir():
        raise DataError(f"data source {root} is not a folder; expected a folder of class subfolders, "
                        "'csv:PATH' or 'tfds:NAME'")
    subdirs = _class_folders(root)
    if not subdirs:
        raise DataError(f"data folder {root} has no class subfolders; expected {root}/<class name>/<image files>")
    layout = _split_layout(root, subdirs) or {"all": root}
    files_by_split: dict[str, dict[str, list]] = {}
    for split, folder in layout.items():
        classes = _class_folders(folder)
        if not classes:
            raise DataError(f"split folder {folder} has no class subfolders; expected {folder}/<class name>/<images>")
        files_by_split[split] = {c.name: _files_under(c) for c in classes}
    train_key = "train" if "train" in files_by_split else "all"
    class_names = sorted(files_by_split[train_key])
    for split, by_class in files_by_split.items():
        extra = sorted(set(by_class) - set(class_names))
        if extra:
            raise DataError(f"classes {', '.join(extra)} appear in {layout[split]} but not in {layout[train_key]}; "
                            "every class needs training images")
    index = {name: i for i, name in enumerate(class_names)}
    skipped = {printable(p): "the file name is not valid UTF-8; rename the file"
               for by_class in files_by_split.values() for files in by_class.values() for p in files
               if not _utf8(str(p))}
    partitions = {
        split: [Example(str(p), index[c]) for c in sorted(by_class) for p in by_class[c] if _utf8(str(p))]
        for split, by_class in files_by_split.items()
    }
    files = [e.key for examples in partitions.values() for e in examples]
    return Catalog("folder", str(root), class_names, partitions, skipped, outside=_outside(files, root))


def read_csv(path: str | Path) -> Catalog:
    """A CSV manifest with columns path,label and optionally split; relative paths are relative to the CSV."""
    path = fs.path(path)
    if not path.is_file():
        raise DataError(f"CSV manifest {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][1][:2]] == ["path", "label"]:
        header, rows = [c.strip().lower() for c in rows[0][1]], rows[1:]
    else:
        header = ["path", "label", "split"]
    if not rows:
        raise DataError(f"CSV manifest {path} lists no images; expected rows of path,label[,split]")
    split_col = header.index("split") if "split" in header else None
    entries, skipped = [], {}
    for line, row in rows:
        if not all(_utf8(cell) for cell in row):
            skipped[f"{printable(path)}, line {line}"] = "the line is not valid UTF-8"
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path}, line {line}: expected path,label[,split], got {','.join(row)!r}")
        file = fs.path(row[0].strip())
        file = file if file.is_absolute() else path.parent / file
        split = "all"
        if split_col is not None and len(row) > split_col and row[split_col].strip():
            split = _SPLIT_ALIASES.get(row[split_col].strip().lower())
            if split is None:
                raise DataError(f"{path}, line {line}: unknown split {row[split_col]!r}; expected train, val or test")
        if not file.is_file():
            skipped[str(file)] = "file not found"
            continue
        entries.append((split, str(file), row[1].strip()))
    class_names = sorted({label for _, _, label in entries})
    index = {name: i for i, name in enumerate(class_names)}
    partitions: dict[str, list[Example]] = {}
    for split, file, label in entries:
        partitions.setdefault(split, []).append(Example(file, index[label]))
    if "all" in partitions and len(partitions) > 1:
        partitions.setdefault("train", []).extend(partitions.pop("all"))
    return Catalog("csv", str(path), class_names, partitions, skipped=skipped,
                   outside=_outside([f for _, f, _ in entries], path.parent))


def _tfds_split_name(split: str) -> str | None:
    return _SPLIT_ALIASES.get(split.lower())


def read_tfds(name: str, data_dir: str = "") -> Catalog:
    """A TensorFlow Datasets image classification dataset, loaded through tfds.load."""
    import tensorflow_datasets as tfds  # heavy; only for TFDS sources

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        known = difflib.get_close_matches(name.split(":")[0].split("/")[0], tfds.list_builders(), n=3)
        hint = f" Did you mean {', '.join(known)}?" if known else ""
        raise DataError(f"unknown TFDS dataset {name!r}.{hint} "
                        "See https://www.tensorflow.org/datasets/catalog") from None
    info = builder.info
    if not info.supervised_keys:
        raise DataError(f"TFDS dataset {name!r} has no (image, label) supervised keys; "
                        "expected an image classification dataset")
    image_key, label_key = info.supervised_keys[:2]
    label_feature = info.features[label_key]
    if not hasattr(label_feature, "names"):
        raise DataError(f"TFDS dataset {name!r}: its label {label_key!r} is not a ClassLabel")
    partitions: dict[str, list[Example]] = {}
    for tfds_split in sorted(info.splits.keys() if info.splits else ["train"]):
        ours = _tfds_split_name(tfds_split)
        if ours is None or ours in partitions:
            continue
        try:
            ds = tfds.load(name, split=tfds_split, data_dir=data_dir or None, shuffle_files=False,
                           decoders={image_key: tfds.decode.SkipDecoding()})
        except Exception as e:  # download or preparation failure: say how to work offline
            raise DataError(
                f"TFDS could not load {name!r} split {tfds_split!r}: {e}. Without internet access, prepare the "
                "dataset on a machine that has it and pass --tfds-data-dir, or use an image folder or csv:PATH."
            ) from e
        labels = list(ds.map(lambda ex: ex[label_key]).as_numpy_iterator())
        partitions[ours] = [Example(f"{tfds_split}:{i}", int(y)) for i, y in enumerate(labels)]
    if "train" not in partitions:
        raise DataError(f"TFDS dataset {name!r} has no train split; splits: {', '.join(info.splits.keys())}")
    return Catalog("tfds", name, list(label_feature.names), partitions,
                   tfds={"name": name, "data_dir": data_dir, "image_key": image_key, "label_key": label_key})


def resolve(source: str, tfds_data_dir: str = "") -> Catalog:
    """Dispatch on the source string: 'demo', 'tfds:NAME', 'csv:PATH', or a folder path."""
    if source == "demo":
        from tf_transfer.data import demo

        return scan_folder(demo.ensure_demo_dataset())
    if source.startswith("tfds:"):
        return read_tfds(source[len("tfds:"):], tfds_data_dir)
    if source.startswith("csv:"):
        return read_csv(source[len("csv:"):])
    if not source:
        raise DataError("no data source given; pass --data FOLDER (or csv:PATH, tfds:NAME, demo)")
    return scan_folder(source)
