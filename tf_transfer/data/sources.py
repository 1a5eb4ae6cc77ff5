"""Resolve a data source (image folder, CSV manifest, TFDS name, demo) into a catalogue of labelled examples."""

from __future__ import annotations

import csv
import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tf_transfer import fs
from tf_transfer import tasks as tasks_lib
from tf_transfer.errors import DataError
from tf_transfer.fs import GPath
from tf_transfer.tasks import Task

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
    label: int  # the (first) task's class index; -1 when the example has no single label for it
    digest: str = ""  # SHA-256 of the file's bytes, once the data check has read it
    targets: tuple = ()  # with named tasks: each task's class indices (None: no label for that task)


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
    tasks: list[Task] = field(default_factory=list)  # named tasks (several label columns); empty: one task


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


def _read_rows(path: Path | GPath) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header in lower case, or None when the first row is data; [(line number, cells)])."""
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    if rows and rows[0][1][0].strip().lower() == "path" and len(rows[0][1]) >= 2:
        return [c.strip() for c in rows[0][1]], rows[1:]
    return None, rows


def _task_columns(header: list[str] | None, wanted: str, path) -> tuple[list[str], list[int]]:
    """The label columns to learn (names and indices): --tasks, else every column but path and split."""
    if header is None:
        if wanted:
            raise DataError(f"--tasks {wanted}: CSV manifest {path} has no header row; expected a first row such as "
                            "path,species,colour[,split] naming the label columns")
        return ["label"], [1]
    columns = {name.lower(): i for i, name in enumerate(header) if i and name.lower() != "split"}
    names = [n.strip() for n in wanted.split(",") if n.strip()] if wanted else [header[i] for i in columns.values()]
    unknown = [n for n in names if n.lower() not in columns]
    if unknown or not names:
        raise DataError(f"CSV manifest {path}: no label column {', '.join(unknown) or '(none)'}; its label columns are "
                        f"{', '.join(header[i] for i in columns.values()) or '(none)'}")
    return names, [columns[n.lower()] for n in names]


def read_csv(path: str | Path, wanted_tasks: str = "") -> Catalog:
    """A CSV manifest: path, one or more label columns, optionally split (header `path,label[,split]`
    or `path,species,colour[,split]`, or no header and path,label[,split]); relative paths are relative
    to the CSV. Several label columns (or --tasks) make one task per column."""
    path = fs.path(path)
    if not path.is_file():
        raise DataError(f"CSV manifest {path} does not exist")
    header, rows = _read_rows(path)
    if not rows:
        raise DataError(f"CSV manifest {path} lists no images; expected rows of path,label[,split]")
    names, label_cols = _task_columns(header, wanted_tasks, path)
    lowered = [c.lower() for c in header] if header else ["path", "label", "split"]
    split_col = lowered.index("split") if "split" in lowered else None
    multi = [header is not None and any(tasks_lib.MULTI_SEPARATOR in r[c] for _, r in rows if len(r) > c)
             for c in label_cols]
    entries, skipped = [], {}
    for line, row in rows:
        where = f"{path}, line {line}"
        if not all(_utf8(cell) for cell in row):
            skipped[f"{printable(path)}, line {line}"] = "the line is not valid UTF-8"
            continue
        cells = [tasks_lib.parse_cell(row[c] if len(row) > c else "", m, where)
                 for c, m in zip(label_cols, multi, strict=True)]
        if not row[0].strip() or all(cell is None for cell in cells):
            raise DataError(f"{where}: expected a path and at least one label ({','.join(['path', *names])}), "
                            f"got {','.join(row)!r}")
        file = fs.path(row[0].strip())
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            skipped[str(file)] = f"file not found (line {line})"
            continue
        entries.append((_row_split(row, split_col, where), str(file), cells))
    named = header is not None and (len(names) > 1 or any(multi) or names[0].lower() != "label")
    tasks = [Task(tasks_lib.check_name(n, str(path)) if named else "", tuple(sorted({x for *_, cells in entries
                                                                                 for x in (cells[i] or ())})), m)
             for i, (n, m) in enumerate(zip(names, multi, strict=True))]
    return _catalog(path, tasks, entries, skipped, named)


def _row_split(row: list[str], split_col: int | None, where: str) -> str:
    if split_col is None or len(row) <= split_col or not row[split_col].strip():
        return "all"
    split = _SPLIT_ALIASES.get(row[split_col].strip().lower())
    if split is None:
        raise DataError(f"{where}: unknown split {row[split_col]!r}; expected train, val or test")
    return split


def _catalog(path, tasks: list[Task], entries: list, skipped: dict, named: bool) -> Catalog:
    """The catalogue of a manifest's rows: the first task's label on each example, every task's targets
    when the tasks are named (several columns, a multi-label column or --tasks)."""
    if len(tasks) == 1 and not tasks[0].multi_label and not named:
        tasks = [Task("", tasks[0].class_names)]
    indices = [{name: i for i, name in enumerate(t.class_names)} for t in tasks]
    partitions: dict[str, list[Example]] = {}
    for split, file, cells in entries:
        targets = tuple(None if c is None else tuple(index[x] for x in c)
                        for c, index in zip(cells, indices, strict=True))
        first = targets[0][0] if targets[0] else -1
        partitions.setdefault(split, []).append(Example(file, first, targets=targets if tasks[0].name else ()))
    if "all" in partitions and len(partitions) > 1:
        partitions.setdefault("train", []).extend(partitions.pop("all"))
    return Catalog("csv", str(path), list(tasks[0].class_names), partitions, skipped=skipped,
                   outside=_outside([f for _, f, _ in entries], path.parent), tasks=tasks if tasks[0].name else [])


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


def resolve(source: str, tfds_data_dir: str = "", tasks: str = "") -> Catalog:
    """Dispatch on the source string: 'demo', 'tfds:NAME', 'csv:PATH', or a folder path. `tasks` picks
    label columns of a CSV manifest (--tasks)."""
    if tasks and not source.startswith("csv:"):
        raise DataError(f"--tasks {tasks}: named tasks come from the label columns of a CSV manifest; "
                        f"expected --data csv:PATH, got {source!r}")
    if source == "demo":
        from tf_transfer.data import demo

        return scan_folder(demo.ensure_demo_dataset())
    if source.startswith("tfds:"):
        return read_tfds(source[len("tfds:"):], tfds_data_dir)
    if source.startswith("csv:"):
        return read_csv(source[len("csv:"):], tasks)
    if not source:
        raise DataError("no data source given; pass --data FOLDER (or csv:PATH, tfds:NAME, demo)")
    return scan_folder(source)
