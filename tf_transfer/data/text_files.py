"""Reading text files with bounded memory: lines, CSV records and whole files, each capped, so that one
huge line, field or file is skipped with its file and line number instead of being read whole.

Peak memory is about the cap plus one read chunk, whatever the file holds. Files in a data folder are
checked before they are opened: links that resolve outside the folder, dangling links and anything that
is not a regular file (devices, pipes) are skipped with a reason. TensorFlow-free.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from tf_transfer import fs

MAX_TEXT_BYTES = 1 << 20  # a longer text (a cell, a line or a file) is almost surely not one example
MAX_LINE_BYTES = 4 * MAX_TEXT_BYTES  # a CSV line holds several cells
CHUNK = 1 << 20
# stands for a line over the cap in what the CSV reader sees (NUL cannot be in a text we keep)
OVER = "\x00tf_transfer: over the limit\x00"


def lines(path, cap: int = MAX_TEXT_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(line number, the line's bytes without its newline) of a file; None for a line over `cap` bytes,
    which is read through without being kept."""
    with fs.path(path).open("rb") as f:
        number, kept, over = 1, bytearray(), False
        while chunk := f.read(CHUNK):
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                if not over:
                    kept += chunk[start:end]
                yield number, None if over or len(kept) > cap else bytes(kept)
                number, kept, over, start = number + 1, bytearray(), False, end + 1
            if not over:
                kept += chunk[start:]
                if len(kept) > cap:
                    kept, over = bytearray(), True
        if kept or over:
            yield number, None if over else bytes(kept)


def csv_records(path, skipped: dict[str, str], errors: str = "surrogateescape") -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of a CSV file (UTF-8, a BOM allowed; quoted cells may span lines). A line over
    MAX_LINE_BYTES or a cell over the csv field limit is recorded in `skipped` and passed over; a
    record's other problems are the caller's. Raises csv.Error (with the line) on a file that cannot be parsed."""
    csv.field_size_limit(MAX_LINE_BYTES)

    def decoded() -> Iterator[str]:
        for number, raw in lines(path, MAX_LINE_BYTES):
            text = OVER if raw is None else raw.decode("utf-8", errors)
            yield (text.removeprefix("\ufeff") if number == 1 else text) + "\n"

    reader = csv.reader(decoded())
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "field larger than field limit" not in str(e):
                raise
            skipped[f"{path}, line {reader.line_num}"] = f"a cell is over {MAX_LINE_BYTES >> 20} MB"
            continue
        if any(OVER in cell for cell in row):
            skipped[f"{path}, line {reader.line_num}"] = f"the line is over {MAX_LINE_BYTES >> 20} MB"
            continue
        yield reader.line_num, row


def read_capped(path, cap: int = MAX_TEXT_BYTES) -> bytes | None:
    """A whole file's bytes, or None when it is over `cap` (at most cap + 1 bytes are read)."""
    with fs.path(path).open("rb") as f:
        raw = f.read(cap + 1)
    return None if len(raw) > cap else raw


def unusable(file, root) -> str:
    """Why a file found under `root` must not be read as a text ('' when it may): a link that resolves
    outside the folder, a dangling link, or not a regular file (a device or a pipe would block or never end)."""
    if not isinstance(file, Path):  # an object store has no links or devices
        return ""
    if file.is_symlink() and not file.exists():
        return "a dangling link"
    if not file.is_file():
        return "not a regular file"
    if not file.resolve().is_relative_to(Path(root).resolve()):
        return f"a link to {file.resolve()}, outside the data folder"
    return ""


def files_in(folder, root, suffix: str, skipped: dict[str, str], recursive: bool = False) -> list:
    """The files with `suffix` in `folder` (at any depth when recursive, hidden folders left out) that may be
    read; the others are recorded in `skipped` with the reason."""
    folder = fs.path(folder)
    if isinstance(folder, Path):
        found = folder.rglob("*") if recursive else folder.iterdir()
        candidates = sorted(p for p in found if p.suffix.lower() == suffix and (p.is_symlink() or not p.is_dir()))
    else:
        candidates = [p for p in (fs.files_under(folder) if recursive else folder.iterdir())
                      if p.suffix.lower() == suffix]
    out = []
    for file in candidates:
        if recursive and any(part.startswith(".") for part in file.relative_to(folder).parts):
            continue
        why = unusable(file, root)
        if why:
            skipped[str(file)] = why
        else:
            out.append(file)
    return out
