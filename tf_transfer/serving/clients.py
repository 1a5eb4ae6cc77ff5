"""Clients for exported models: TF Serving (or ``tf_transfer.serve``) over REST and gRPC, and an
in-process SavedModel, all answering ``predict(list of encoded images) -> list of Prediction``.

A request whose batch holds an unreadable image fails as a whole (TF Serving's semantics: one op
error fails the request). ``predict_files`` therefore retries a failed batch one image at a time,
so that the good images still get answers and the bad ones are reported by name.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tf_transfer import fs
from tf_transfer.errors import TransferError

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
BYTES_INPUT = "image_bytes"


class ServingError(TransferError, RuntimeError):
    """A request could not be answered."""


class ServerUnavailable(ServingError):
    """No server answered at the address (down, unreachable, or too slow)."""


class ModelNotFound(ServingError):
    """The server is up but does not serve this model or version."""


class BadRequest(ServingError):
    """The server refused the request (e.g. an unreadable image); the message says why."""


@dataclass
class Prediction:
    """One image's answer: the top classes and every class's score; with several heads, one
    Prediction per task in `tasks` (a multi-label task's top classes are the labels over their
    thresholds)."""

    top_classes: list[str]
    top_scores: list[float]
    scores: dict[str, float] = field(default_factory=dict)  # every class name -> probability
    tasks: dict[str, Prediction] = field(default_factory=dict)

    @classmethod
    def from_outputs(cls, out: dict) -> Prediction:
        if "top_k_classes" in out:
            return cls._single(out)
        multi = [k.removesuffix("_all_scores") for k in out if k.endswith("_all_scores")]
        single = [k.removesuffix("_top_k_classes") for k in out if k.endswith("_top_k_classes")]
        if not multi and not single:
            raise ServingError(f"unexpected model outputs {sorted(out)}; expected scores/classes/top_k_classes or "
                               "<task>_... outputs of a tf_transfer export")
        tasks = {t: cls._single(out, f"{t}_") for t in single}
        for t in multi:
            shown = [(_text(c), float(s)) for c, s in zip(out[f"{t}_classes"], out[f"{t}_scores"], strict=True) if c]
            tasks[t] = cls([c for c, _ in shown], [s for _, s in shown],
                           {str(i): float(s) for i, s in enumerate(out[f"{t}_all_scores"])})
        return cls([], [], {}, dict(sorted(tasks.items())))  # servers return outputs by name: sort likewise

    @classmethod
    def _single(cls, out: dict, prefix: str = "") -> Prediction:
        return cls([_text(c) for c in out[f"{prefix}top_k_classes"]], [float(s) for s in out[f"{prefix}top_k_scores"]],
                   {_text(c): float(s) for c, s in zip(out[f"{prefix}classes"], out[f"{prefix}scores"], strict=True)})

    def rows(self, top_k: int) -> list[tuple[str, int, str, float]]:
        """(task, rank, class, score) of the best `top_k` classes (task '' for one-task models)."""
        parts = self.tasks.items() if self.tasks else [("", self)]
        return [(task, rank, c, s) for task, p in parts
                for rank, (c, s) in enumerate(list(zip(p.top_classes, p.top_scores, strict=True))[:top_k], start=1)]

    def describe(self, top_k: int) -> str:
        """The answer on one line: 'cat 0.912, dog 0.051' or 'shape: circle 0.98; tags: dark 0.91, large 0.70'."""
        if not self.tasks:
            return ", ".join(f"{c} {s:.3f}" for _, _, c, s in self.rows(top_k))
        return "; ".join(f"{t}: " + (", ".join(f"{c} {s:.3f}" for _, _, c, s in p.rows(top_k)) or "(none)")
                         for t, p in self.tasks.items())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _with_retries(call: Callable, retries: int, backoff: float, retry_on: tuple[type[BaseException], ...]):
    for attempt in range(retries + 1):
        try:
            return call()
        except retry_on:
            if attempt == retries:
                raise
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


class RestClient:
    """TF Serving's REST API: /v1/models/<name>[/versions/<v>][:predict|:classify|/metadata]."""

    def __init__(self, url: str, model: str, version: int | None = None, timeout: float = 30.0,
                 retries: int = 2, backoff: float = 0.2):
        self.base = url.rstrip("/")
        self.model, self.version = model, version
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        # An opener of our own reads the proxy settings now, not those cached by urllib's global opener.
        self._opener = urllib.request.build_opener()

    def _path(self, suffix: str = "") -> str:
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.base}/v1/models/{self.model}{version}{suffix}"

    def _request(self, url: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})

        def call():
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                try:
                    message = json.loads(e.read()).get("error", e.reason)
                except (json.JSONDecodeError, AttributeError):
                    message = str(e.reason)
                if e.code == 404:
                    raise ModelNotFound(f"{url}: {message}") from None
                raise BadRequest(f"{url}: HTTP {e.code}: {message}") from None

        try:
            return _with_retries(call, self.retries, self.backoff, (urllib.error.URLError, ConnectionError))
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ServerUnavailable(f"no answer from {self.base} after {self.retries + 1} tries ({reason}); "
                                    "is the model server running?") from None

    def predict(self, images: Sequence[bytes], signature: str = DEFAULT_SIGNATURE) -> list[Prediction]:
        body = {"signature_name": signature,
                "instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in images]}
        return [Prediction.from_outputs(p) for p in self._request(self._path(":predict"), body)["predictions"]]

    def predict_texts(self, texts: Sequence[str], signature: str = DEFAULT_SIGNATURE) -> list[Prediction]:
        """A text model's predictions: {"instances": ["a review ...", ...]}."""
        body = {"signature_name": signature, "instances": list(texts)}
        return [Prediction.from_outputs(p) for p in self._request(self._path(":predict"), body)["predictions"]]

    def classify(self, images: Sequence[bytes]) -> list[list[tuple[str, float]]]:
        body = {"signature_name": "classify",
                "examples": [{"image/encoded": {"b64": base64.b64encode(b).decode("ascii")}} for b in images]}
        return [[(c, float(s)) for c, s in r] for r in self._request(self._path(":classify"), body)["results"]]

    def metadata(self) -> dict:
        return self._request(self._path("/metadata"))

    def status(self) -> dict:
        return self._request(self._path())


class GrpcClient:
    """TF Serving's gRPC PredictionService (Predict, Classify, GetModelMetadata)."""

    def __init__(self, target: str, model: str, version: int | None = None, timeout: float = 30.0,
                 retries: int = 2, backoff: float = 0.2):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target, self.model, self.version = target, model, version
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                                ("grpc.max_send_message_length", 64 << 20)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _spec(self, signature: str):
        from tensorflow_serving.apis import model_pb2

        spec = model_pb2.ModelSpec(name=self.model, signature_name=signature)
        if self.version is not None:
            spec.version.value = self.version
        return spec

    def _call(self, method, request):
        import grpc

        class _Retry(Exception):
            pass

        def call():
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    raise _Retry(e.details()) from None
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    raise ModelNotFound(f"{self.target}: {e.details()}") from None
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ServerUnavailable(f"{self.target}: no answer within {self.timeout}s") from None
                raise BadRequest(f"{self.target}: {e.code().name}: {e.details()}") from None

        try:
            return _with_retries(call, self.retries, self.backoff, (_Retry,))
        except _Retry as e:
            raise ServerUnavailable(f"no answer from {self.target} after {self.retries + 1} tries ({e}); "
                                    "is the model server running?") from None

    def predict(self, images: Sequence[bytes], signature: str = DEFAULT_SIGNATURE,
                input_name: str = BYTES_INPUT) -> list[Prediction]:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest(model_spec=self._spec(signature))
        request.inputs[input_name].CopyFrom(tf.make_tensor_proto(list(images), dtype=tf.string))
        response = self._call(self._stub.Predict, request)
        out = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        return [Prediction.from_outputs({k: v[i] for k, v in out.items()}) for i in range(len(images))]

    def predict_texts(self, texts: Sequence[str], signature: str = DEFAULT_SIGNATURE) -> list[Prediction]:
        """A text model's predictions (its serving_default takes `text`)."""
        return self.predict([t.encode("utf-8") if isinstance(t, str) else t for t in texts], signature, "text")

    def classify(self, images: Sequence[bytes]) -> list[list[tuple[str, float]]]:
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest(model_spec=self._spec("classify"))
        for b in images:
            request.input.example_list.examples.add().features.feature["image/encoded"].bytes_list.value.append(b)
        response = self._call(self._stub.Classify, request)
        return [[(c.label, float(c.score)) for c in cl.classes] for cl in response.result.classifications]

    def metadata(self) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=self._spec(""),
                                                                 metadata_field=["signature_def"])
        return json_format.MessageToDict(self._call(self._stub.GetModelMetadata, request),
                                         preserving_proto_field_name=True)


class LocalModel:
    """An exported SavedModel loaded in this process, with the same predict() as the clients."""

    def __init__(self, path: str | Path):
        from tf_transfer import folders
        from tf_transfer.serving import savedmodel

        self.path = folders.resolve_export(path)
        self._fn = savedmodel.load(self.path).signatures[DEFAULT_SIGNATURE]
        self.input_name = next(iter(self._fn.structured_input_signature[1]))  # image_bytes or text

    def predict(self, images: Sequence[bytes], signature: str = DEFAULT_SIGNATURE) -> list[Prediction]:
        """Predictions for encoded images (or, for a text model, UTF-8 texts)."""
        import tensorflow as tf

        try:
            out = self._fn(**{self.input_name: tf.constant(list(images), tf.string)})
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
            from tf_transfer.data.images import clean_error

            raise BadRequest(clean_error(e)) from None
        out = {k: v.numpy() for k, v in out.items()}
        return [Prediction.from_outputs({k: v[i] for k, v in out.items()}) for i in range(len(images))]

    def predict_texts(self, texts: Sequence[str]) -> list[Prediction]:
        return self.predict([t.encode("utf-8") if isinstance(t, str) else t for t in texts])


def client_for(server: str, model: str, **kwargs) -> RestClient | GrpcClient:
    """A client for 'http(s)://host:port' (REST) or 'grpc://host:port' / 'host:port' (gRPC)."""
    if server.startswith(("http://", "https://")):
        return RestClient(server, model, **kwargs)
    return GrpcClient(server.removeprefix("grpc://"), model, **kwargs)


@dataclass
class FileResult:
    path: str
    prediction: Prediction | None = None
    error: str = ""


def predict_files(model, paths: Sequence[str | Path], batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None) -> list[FileResult]:
    """Predict every file in batches; a batch refused because of a bad image is retried one image
    at a time, so each bad file gets its own error and the rest still get predictions."""
    results: list[FileResult] = []
    total = len(paths)
    for start in range(0, total, batch_size):
        batch = [str(p) for p in paths[start:start + batch_size]]
        contents = []
        for p in batch:
            try:
                contents.append(fs.path(p).read_bytes())
            except OSError as e:
                contents.append(None)
                results.append(FileResult(p, error=f"cannot read: {e.strerror}"))
        readable = [(p, c) for p, c in zip(batch, contents, strict=True) if c is not None]
        try:
            preds = model.predict([c for _, c in readable]) if readable else []
            results.extend(FileResult(p, pred) for (p, _), pred in zip(readable, preds, strict=True))
        except BadRequest:
            for p, c in readable:
                try:
                    results.append(FileResult(p, model.predict([c])[0]))
                except BadRequest as e:
                    results.append(FileResult(p, error=str(e)))
        if progress:
            progress(min(start + batch_size, total), total)
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r.path])


def expand_inputs(items: Iterable[str]) -> list:
    """Files as given, and every image file under given folders (sorted); local paths or URLs."""
    from tf_transfer.data.images import IMAGE_EXTENSIONS

    out: list = []
    for item in items:
        p = fs.path(item)
        if p.is_dir():
            out.extend(f for f in fs.files_under(p) if f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(p)
    return out
