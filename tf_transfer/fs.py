"""One file-system layer: local paths through :mod:`pathlib`, URLs (``gs://``, ``s3://``, ``hdfs://``,
``ram://``, any scheme ``tf.io.gfile`` knows) through :class:`GPath`, which offers the part of the
``pathlib.Path`` interface tf_transfer uses. Every data, weights, run-folder and export path goes
through :func:`path`, so ``gs://bucket/x`` is never turned into ``gs:/bucket/x``.

TensorFlow is imported only when a URL is used, so this module stays in the TF-free base.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(p: Any) -> bool:
    """Whether `p` names a location on a non-local file system (``file://`` counts as local)."""
    if isinstance(p, GPath):
        return True
    return isinstance(p, str) and bool(_URL.match(p)) and not p.startswith("file://")


def path(p: str | os.PathLike) -> Path | GPath:
    """A `Path` for a local path (``~`` expanded, ``file://`` stripped), a `GPath` for a URL."""
    if isinstance(p, (Path, GPath)):
        return p
    text = os.fspath(p)
    if is_url(text):
        return GPath(text)
    return Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


class _Stat:
    def __init__(self, size: int, mtime: float):
        self.st_size, self.st_mtime = size, mtime


class GPath:
    """A path on a ``tf.io.gfile`` file system, with the ``pathlib.Path`` methods tf_transfer uses.

    Object stores have no folders and no atomic rename: :meth:`rename` of a folder there is a copy
    and a delete (see the README's "Cloud paths").
    """

    def __init__(self, url: str):
        scheme, rest = url.split("://", 1)
        rest = re.sub("/+", "/", rest)
        self._scheme, self._rest = scheme, rest.rstrip("/") if rest.strip("/") else rest

    # --- pure path operations

    def __str__(self) -> str:
        return f"{self._scheme}://{self._rest}"

    def __repr__(self) -> str:
        return f"GPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPath) and str(self) == str(other)

    def __lt__(self, other: GPath) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str | os.PathLike) -> GPath:
        part = os.fspath(part)
        if is_url(part):
            return GPath(part)
        return GPath(f"{self}/{part}" if self._rest else f"{self._scheme}://{part}")

    def joinpath(self, *parts: str) -> GPath:
        out = self
        for part in parts:
            out = out / part
        return out

    @property
    def name(self) -> str:
        return posixpath.basename(self._rest)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> GPath:
        return GPath(f"{self._scheme}://{posixpath.dirname(self._rest)}")

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"{self._scheme}://", *[p for p in self._rest.split("/") if p])

    def with_name(self, name: str) -> GPath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> GPath:
        return self.parent / (self.stem + suffix)

    def relative_to(self, other: GPath) -> PurePosixPath:
        base = str(other).rstrip("/") + "/"
        if not str(self).startswith(base):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(str(self)[len(base):])

    def is_relative_to(self, other: GPath) -> bool:
        return self == other or str(self).startswith(str(other).rstrip("/") + "/")

    def expanduser(self) -> GPath:
        return self

    def resolve(self) -> GPath:
        return self

    def is_absolute(self) -> bool:
        return True

    def as_posix(self) -> str:
        return str(self)

    # --- queries

    def _missing(self) -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self))

    def exists(self) -> bool:
        return _gfile().exists(str(self))

    def is_dir(self) -> bool:
        return _gfile().isdir(str(self))

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def is_symlink(self) -> bool:
        return False

    def stat(self) -> _Stat:
        import tensorflow as tf

        try:
            s = _gfile().stat(str(self))
        except tf.errors.NotFoundError:
            raise self._missing() from None
        return _Stat(s.length, s.mtime_nsec / 1e9)

    lstat = stat

    def iterdir(self) -> Iterator[GPath]:
        for name in sorted(_gfile().listdir(str(self))):
            yield self / name.rstrip("/")

    def rglob(self, pattern: str) -> Iterator[GPath]:
        """Every entry below this folder (only the pattern '*' is supported)."""
        if pattern != "*":
            raise ValueError(f"GPath.rglob supports only '*', got {pattern!r}")
        for folder, subdirs, files in _gfile().walk(str(self)):
            base = GPath(folder)
            for name in sorted(subdirs) + sorted(files):
                yield base / name.rstrip("/")

    # --- reading and writing

    def read_bytes(self) -> bytes:
        import tensorflow as tf

        try:
            with _gfile().GFile(str(self), "rb") as f:
                return f.read()
        except tf.errors.NotFoundError:
            raise self._missing() from None

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> int:
        self.unlink(missing_ok=True)  # ram:// appends to an existing file instead of truncating it
        with _gfile().GFile(str(self), "wb") as f:
            f.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def open(self, mode: str = "r", newline: str | None = None, encoding: str | None = "utf-8",
             errors: str | None = None):
        """Binary modes as gfile streams; text reads decoded in memory (manifests and small records)."""
        if "b" in mode:
            return _gfile().GFile(str(self), mode)
        if mode != "r":
            raise ValueError(f"GPath.open supports 'r' and binary modes, got {mode!r}")
        text = self.read_bytes().decode(encoding or "utf-8", errors or "strict")
        return io.StringIO(text, newline=newline)

    # --- changing the file system

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if self.is_dir():
            if not exist_ok:
                raise FileExistsError(str(self))
            return
        if self.exists():
            raise FileExistsError(str(self))
        if not parents and not self.parent.is_dir():
            raise self.parent._missing()
        _gfile().makedirs(str(self))

    def unlink(self, missing_ok: bool = False) -> None:
        import tensorflow as tf

        try:
            _gfile().remove(str(self))
        except tf.errors.NotFoundError:
            if not missing_ok:
                raise self._missing() from None

    def rename(self, target: GPath) -> GPath:
        """Rename; FileExistsError if target exists. A folder moves file by file, saved_model.pb last (object
        stores have no folder rename, and TF's ram:// renames only the folder entry)."""
        import tensorflow as tf

        if target.exists():
            raise FileExistsError(str(target))
        if self.is_dir():
            for f in sorted(files_under(self), key=lambda f: (f.name == "saved_model.pb", str(f))):
                dest = target / f.relative_to(self).as_posix()
                dest.parent.mkdir(parents=True, exist_ok=True)
                f.rename(dest)
            rmtree(self)
            return target
        try:
            _gfile().rename(str(self), str(target), overwrite=False)
        except tf.errors.AlreadyExistsError:
            raise FileExistsError(str(target)) from None
        except tf.errors.NotFoundError:
            raise self._missing() from None
        return target

    def replace(self, target: GPath) -> GPath:
        _gfile().rename(str(self), str(target), overwrite=True)
        return target


def rmtree(p: Path | GPath) -> None:
    """Remove a folder and everything in it; no error if it is gone."""
    if isinstance(p, GPath):
        import tensorflow as tf

        try:
            _gfile().rmtree(str(p))
        except tf.errors.NotFoundError:
            pass
    else:
        shutil.rmtree(p, ignore_errors=True)


def files_under(folder: Path | GPath) -> list[Path | GPath]:
    """Every file below `folder`, sorted (one listing per folder on object stores, no per-file stat)."""
    if isinstance(folder, GPath):
        return sorted(GPath(d) / name for d, _, names in _gfile().walk(str(folder)) for name in names)
    return sorted(f for f in folder.rglob("*") if f.is_file())


def upload(local: Path, remote: GPath, last: tuple[str, ...] = ("saved_model.pb",)) -> None:
    """Copy a local file or folder to a URL; files named in `last` are copied last (a reader that waits
    for them never sees the rest missing)."""
    if local.is_file():
        remote.parent.mkdir(parents=True, exist_ok=True)
        _put(local, remote)
        return
    files = sorted(files_under(local), key=lambda f: (f.name in last, str(f)))
    remote.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = remote / f.relative_to(local).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        _put(f, target)


def _put(local: Path, remote: GPath) -> None:
    remote.unlink(missing_ok=True)  # ram:// appends to an existing file instead of replacing it
    _gfile().copy(str(local), str(remote), overwrite=True)


def download(remote: GPath, local: Path, overwrite: bool = True) -> None:
    """Copy a file or folder from a URL to a local path (with overwrite False, existing files stay)."""
    if not remote.is_dir():
        local.parent.mkdir(parents=True, exist_ok=True)
        if overwrite or not local.exists():
            _gfile().copy(str(remote), str(local), overwrite=True)
        return
    for f in remote.rglob("*"):
        if not f.is_dir():
            download(f, local / f.relative_to(remote).as_posix(), overwrite)


def cache_home() -> Path:
    """Where tf_transfer keeps generated data and caches: $TF_TRANSFER_CACHE or ~/.cache/tf_transfer."""
    return Path(os.environ.get("TF_TRANSFER_CACHE", Path.home() / ".cache" / "tf_transfer"))


def cache_dir(kind: str, url: str | GPath) -> Path:
    """A local folder (below cache_home()) for copies of `url`, one per URL."""
    key = hashlib.sha256(str(url).encode()).hexdigest()[:16]
    return cache_home() / kind / key


def local_copy(p: str | os.PathLike) -> Path:
    """A local path to read `p` from: `p` itself, or a downloaded copy of a URL (file or folder)."""
    where = path(p)
    if isinstance(where, Path):
        return where
    if not where.exists():
        raise where._missing()
    stat = "" if where.is_dir() else f"{where.stat().st_size}:{where.stat().st_mtime}"
    folder = cache_dir("downloads", f"{where} {stat}")  # a changed file is downloaded again
    target = folder / where.name
    if not target.exists():
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=mkdirs(folder)))
        try:
            download(where, tmp / where.name)
            os.replace(tmp / where.name, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def mkdirs(folder: Path) -> Path:
    """`folder`, created with its parents if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder
