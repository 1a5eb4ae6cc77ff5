"""The models the local server serves: versions loaded from model folders, refreshed as new ones appear,
and the limits every request is checked against.

Like TF Serving, it watches each model folder: a new complete version is loaded and served, then the
old one unloaded (version policy ``latest`` keeps the newest version; ``latest:N``, ``all`` or
``specific:1,3`` as TF Serving's policies); an incomplete or unloadable version is never served.
Requests are bounded before any expansion (body size, batch size, every tensor dimension); client
mistakes get 4xx with a message, internal errors a 500 with an id to find in the log, never a
traceback or internal detail.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_transfer.data.images import clean_error
from tf_transfer.errors import TransferError
from tf_transfer.folders import ModelDir
from tf_transfer.serving import savedmodel, signatures
from tf_transfer.serving.inputs import InputSpec, RequestError, ServeLimits

log = logging.getLogger(__name__)


def not_found(name: str, version) -> RequestError:
    what = f"Specific({name}, {version})" if version not in (None, "", 0) else f"Latest({name})"
    return RequestError(HTTPStatus.NOT_FOUND, f"Servable not found for request: {what}")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: TF Serving's latest (N newest), all, or specific ones."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, arg = text.partition(":")
        try:
            if kind == "latest":
                policy = cls("latest", int(arg or 1))
                if policy.count >= 1:
                    return policy
            elif kind == "all" and not arg:
                return cls("all")
            elif kind == "specific" and arg:
                return cls("specific", versions=tuple(sorted(int(v) for v in arg.split(","))))
        except ValueError:
            pass
        raise TransferError(f"--version-policy {text!r}: expected latest, latest:N, all or specific:V1,V2")

    def select(self, available: list[int]) -> list[int]:
        if self.kind == "all":
            return available
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return available[-self.count:]


class ServedVersion:
    """One loaded version of an exported model, with the operations both front ends need."""

    def __init__(self, path: Path, limits: ServeLimits):
        from tensorflow.core.protobuf import saved_model_pb2

        self.path, self.version, self.limits = path, int(path.name), limits
        self.loaded = savedmodel.load(path)  # with tensorflow-text's ops for text models
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / ModelDir.SAVED_MODEL).read_bytes())
        self.signature_defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items() if not k.startswith("__")}

    def signature(self, name: str):
        if not isinstance(name, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"signature_name must be a string, got {type(name).__name__}")
        name = name or signatures.DEFAULT
        if name not in self.signature_defs:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"Serving signature name: \"{name}\" not found in signature def")
        return name, self.signature_defs[name]

    def input_kind(self) -> str:
        """What serving_default takes: 'image' (encoded image bytes), 'text' (strings) or 'tensor'."""
        sig = self.signature_defs.get(signatures.DEFAULT)
        inputs = set(sig.inputs) if sig is not None else set()
        return "image" if signatures.BYTES_INPUT in inputs else "text" if "text" in inputs else "tensor"

    def input_specs(self, name: str) -> dict[str, InputSpec]:
        """The declared inputs of signature `name` (rank, sizes and dtype every request is checked against)."""
        return {k: InputSpec.from_tensor_info(k, v) for k, v in self.signature(name)[1].inputs.items()}

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a signature on named numpy inputs; bad inputs become RequestError(400)."""
        name, _ = self.signature(signature)
        specs = self.input_specs(name)
        if set(inputs) != set(specs):
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f"signature {name} takes inputs {sorted(specs)}, got {sorted(inputs)}")
        for key, value in inputs.items():  # the front ends checked this already; a last line before TensorFlow
            specs[key].check_shape(np.shape(value), self.limits)
            if value.dtype != object:
                specs[key].check_dtype(value.dtype.name)
        try:
            tensors = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
            with self.limits.model_slot:
                out = self.loaded.signatures[name](**tensors)
            return {k: v.numpy() for k, v in out.items()}
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, ValueError, TypeError) as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, clean_error(e)) from None

    def classify(self, examples: list[bytes], signature: str = "") -> tuple[np.ndarray, np.ndarray]:
        name = signature or signatures.CLASSIFY
        sig = self.signature_defs.get(name)
        if sig is None or sig.method_name != signatures.CLASSIFY_METHOD:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"signature {name!r} is not a classify signature")
        out = self.run(name, {signatures.EXAMPLE_INPUT: np.array(examples, dtype=object)})
        return out["classes"], out["scores"]

    def metadata_proto(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.signature_defs.items():
            sig_map.signature_def[k].CopyFrom(v)
        return sig_map


class ServedModel:
    """A model folder watched for versions: loads new complete ones, unloads those the policy drops."""

    def __init__(self, model_dir: str | Path, limits: ServeLimits, policy: VersionPolicy = VersionPolicy()):
        self.dir = ModelDir(model_dir)
        if (self.dir.path / ModelDir.SAVED_MODEL).is_file():  # a version folder was given: serve its model
            self.dir = ModelDir(self.dir.path.parent)
        self.name, self.limits, self.policy = self.dir.name, limits, policy
        self.versions: dict[int, ServedVersion] = {}
        self.failed: dict[int, str] = {}  # versions that would not load (not retried)
        self._lock = threading.Lock()
        self.refresh()
        if not self.versions:
            raise TransferError(f"{self.dir.path} has no loadable version; expected <name>/<version>/saved_model.pb"
                                + (f" ({'; '.join(self.failed.values())})" if self.failed else ""))

    def refresh(self) -> None:
        """Load the versions the policy wants that are not loaded yet, then unload the others."""
        wanted = self.policy.select([v for v in self.dir.versions() if v not in self.failed])
        for version in wanted:
            if version not in self.versions:
                try:
                    loaded = ServedVersion(self.dir.version_path(version), self.limits)
                except Exception as e:  # a broken version is reported and skipped, never served
                    self.failed[version] = f"version {version}: {type(e).__name__}: {str(e)[:200]}"
                    log.error("Model %s: could not load %s", self.name, self.failed[version])
                    continue
                with self._lock:
                    self.versions = {**self.versions, version: loaded}
                log.info("Model %s: serving version %d", self.name, version)
        keep = set(wanted) & set(self.versions)
        if keep and keep != set(self.versions):
            with self._lock:
                dropped = sorted(set(self.versions) - keep)
                self.versions = {v: m for v, m in self.versions.items() if v in keep}
            log.info("Model %s: unloaded version(s) %s", self.name, ", ".join(map(str, dropped)))

    def get(self, version: int | None) -> ServedVersion:
        versions = self.versions  # one consistent snapshot
        if version in (None, 0):
            if not versions:
                raise not_found(self.name, version)
            return versions[max(versions)]
        if version not in versions:
            raise not_found(self.name, version)
        return versions[version]

    def status(self) -> dict:
        return {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in sorted(self.versions, reverse=True)]}


class Registry:
    """The served models by name, refreshed by a background watcher (TF Serving's file-system polling)."""

    def __init__(self, models: Sequence[ServedModel], poll_seconds: float = 2.0):
        self.models = {m.name: m for m in models}
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="tf_transfer-versions")

    def get(self, name: str, version: str | int | None = None) -> ServedVersion:
        model = self.models.get(name)
        if model is None:
            raise not_found(name, version)
        try:
            number = int(version) if version not in (None, "") else None
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"version must be an integer, got {version!r}") from None
        return model.get(number)

    def start(self) -> None:
        if self.poll_seconds > 0:
            self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            for model in list(self.models.values()):
                try:
                    model.refresh()
                except Exception:  # keep watching the other models
                    log.exception("Model %s: refreshing versions failed", model.name)


def internal_error(where: str) -> RequestError:
    """A 500 that tells the client an id to quote, and logs the traceback under it (never sent)."""
    error_id = uuid.uuid4().hex[:8]
    log.exception("internal error %s in %s", error_id, where)
    return RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error (id {error_id}); see the server log")
