"""What a request may hold, checked before anything is converted: the limits of this server and each
signature input's declared rank, sizes and dtype.

Every REST and gRPC input goes through :class:`InputSpec` in the same order, rank, then sizes, then
dtype, before numpy or TensorFlow sees it: TensorFlow 2.21 itself crashes the process when it converts a
string array of rank 33, so a rank that the signature does not declare must never reach a conversion.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np

MAX_RANK = 8  # for inputs whose signature leaves the rank open; every export of ours declares it


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP status (gRPC maps it)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def bad_request(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


class ServeLimits:
    """Bounds on what one request may ask for, checked before anything is expanded or decoded."""

    def __init__(self, max_batch: int = 64, max_tensor_bytes: int = 64 << 20, max_dim: int = 1 << 15,
                 concurrent_runs: int = 4):
        self.max_batch, self.max_tensor_bytes, self.max_dim = max_batch, max_tensor_bytes, max_dim
        self.model_slot = threading.BoundedSemaphore(concurrent_runs)  # concurrent decodes and forward passes

    def check_batch(self, n: int) -> None:
        if n > self.max_batch:
            raise bad_request(f"batch of {n} exceeds this server's limit of {self.max_batch} (--max-batch)")

    def check_array(self, name: str, shape: Sequence[int], itemsize: int = 1) -> None:
        """Every dimension bounded, the batch within --max-batch and the total size within limits."""
        if any(d < 0 for d in shape):
            raise bad_request(f"input {name!r}: dimensions must be known and >= 0")
        if shape:
            self.check_batch(shape[0])
        if any(d > self.max_dim for d in shape[1:]):
            raise bad_request(f"input {name!r}: a dimension exceeds {self.max_dim}")
        elements = int(np.prod([int(d) for d in shape], dtype=object)) if shape else 1
        if elements * itemsize > self.max_tensor_bytes:
            raise bad_request(f"input {name!r} of shape {list(shape)} exceeds {self.max_tensor_bytes} bytes")


@dataclass(frozen=True)
class InputSpec:
    """One signature input as declared: its dtype name ('string', 'float32', ...) and shape (None for
    an unknown dimension; `shape` None for an unknown rank)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None

    @classmethod
    def from_tensor_info(cls, name: str, info) -> InputSpec:
        import tensorflow as tf

        dims = None if info.tensor_shape.unknown_rank else tuple(
            d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
        return cls(name, tf.dtypes.as_dtype(info.dtype).name, dims)

    def describe(self) -> str:
        """What this input expects, in the words of a request ('a list of strings, rank 1')."""
        if self.dtype == "string":
            what = ('base64 images ({"b64": ...})' if "image" in self.name else 'serialized tf.Examples ({"b64": ...})'
                    if self.name == "inputs" else "strings")
            values = f"a list of {what}"
        else:
            values = f"{self.dtype} numbers"
        if self.shape is None:
            return f"{values} of rank at most {MAX_RANK}"
        dims = ", ".join("any" if d is None else str(d) for d in self.shape)
        return f"{values}, rank {len(self.shape)} (shape [{dims}])"

    def check_shape(self, shape: Sequence[int], limits: ServeLimits, itemsize: int = 1) -> None:
        """Rank first, then each declared size, then the limits; RequestError(400) saying what was expected."""
        rank = len(shape)
        if (self.shape is None and rank > MAX_RANK) or (self.shape is not None and rank != len(self.shape)):
            raise bad_request(f"{self.name}: {self.describe()}; got rank {rank}")
        for axis, (want, got) in enumerate(zip(self.shape or (), shape, strict=False)):
            if want is not None and want != got:
                raise bad_request(f"{self.name}: {self.describe()}; got size {got} on axis {axis}")
        limits.check_array(self.name, shape, itemsize)

    def check_dtype(self, dtype: str) -> None:
        if dtype != self.dtype:
            raise bad_request(f"{self.name}: {self.describe()}; got {dtype} values")

    def from_json(self, value, limits: ServeLimits) -> np.ndarray:
        """A JSON value (nested lists) as an array of this input, checked before it is built: rank,
        sizes, then every value's type ({"b64": ...} and strings for string inputs, numbers otherwise)."""
        shape = json_shape(value)
        self.check_shape(shape, limits)
        flat = _flatten(value, shape, self.name)
        if self.dtype == "string":
            return np.array([_json_bytes(v, self.name, i) for i, v in enumerate(flat)] or [], dtype=object
                            ).reshape(shape)
        return np.array([_json_number(v, self.dtype, self.name, i) for i, v in enumerate(flat)],
                        dtype=self.dtype).reshape(shape)


def json_shape(value) -> list[int]:
    """The shape of nested lists, read along the first elements (without recursion: any depth is safe)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value, shape: list[int], name: str) -> list:
    """The leaves of nested lists in row-major order, every list as long as `shape` says."""
    level = [value]
    for depth, size in enumerate(shape):
        nxt = []
        for item in level:
            if not isinstance(item, list) or len(item) != size:
                got = f"of length {len(item)}" if isinstance(item, list) else "not a list"
                raise bad_request(f"{name}: the values must form a rectangular array of shape {shape}; "
                                  f"a value at depth {depth} is {got}")
            nxt.extend(item)
        level = nxt
    for i, leaf in enumerate(level):
        if isinstance(leaf, list):
            raise bad_request(f"{name}: the values must form a rectangular array of shape {shape}; "
                              f"value {i} is a list")
    return level


def decode_b64(value: dict, name: str) -> bytes:
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise bad_request(f'{name}: expected {{"b64": "<base64 string>"}} for binary values')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f'{name}: invalid base64 in a {{"b64": ...}} value') from None


def encode_text(text: str, name: str) -> bytes:
    """A JSON string as UTF-8; one that cannot be encoded (a lone surrogate such as "\\ud800") is a 400."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"{name}: a string is not valid Unicode ({e.reason} at character {e.start}); "
                          "send UTF-8 text or {\"b64\": ...}") from None


def _json_bytes(value, name: str, index: int) -> bytes:
    if isinstance(value, str):
        return encode_text(value, name)
    if isinstance(value, dict):
        return decode_b64(value, name)
    raise bad_request(f"{name}: expected strings or {{\"b64\": ...}} values; value {index} is "
                      f"{type(value).__name__ if value is not None else 'null'}")


def _json_number(value, dtype: str, name: str, index: int):
    kind = "bool" if dtype == "bool" else "integer" if dtype.startswith(("int", "uint")) else "number"
    ok = (isinstance(value, bool) if kind == "bool" else
          isinstance(value, int) and not isinstance(value, bool) if kind == "integer" else
          isinstance(value, int | float) and not isinstance(value, bool))
    if not ok:
        raise bad_request(f"{name}: expected {dtype} values; value {index} is "
                          f"{type(value).__name__ if value is not None else 'null'}")
    if kind == "integer" and not np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:
        raise bad_request(f"{name}: value {index} ({value}) is outside the range of {dtype}")
    return value
