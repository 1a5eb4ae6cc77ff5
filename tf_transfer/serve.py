"""A local development server that speaks TF Serving's REST API subset (and its gRPC API) over
exported SavedModels, so the same clients and the same request JSON work against both.

    python -m tf_transfer.serve saved_models/NAME [saved_models/OTHER ...] [--port 8501] [--grpc-port 8500]

REST: GET /v1/models/<name>[/versions/<v>] (status), GET .../metadata, POST ...:predict,
POST ...:classify. gRPC: PredictionService Predict/Classify/GetModelMetadata and ModelService
GetModelStatus. It serves the latest version of each model, binds to 127.0.0.1 by default, bounds
request bodies and batch sizes, and answers bad requests with 4xx and {"error": "..."}. TF Serving
is the production path; this server is a development convenience.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import sys
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_transfer import export, signatures
from tf_transfer.images import clean_error

log = logging.getLogger(__name__)
_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>:predict|:classify|/metadata)?$")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ServedModel:
    """The latest version of one exported model, with the operations both front ends need."""

    def __init__(self, model_dir: str | Path, max_batch: int = 64):
        from tensorflow.core.protobuf import saved_model_pb2

        self.path = export.latest_version(model_dir)
        self.name, self.version = self.path.parent.name, int(self.path.name)
        self.max_batch = max_batch
        self.loaded = tf.saved_model.load(str(self.path))
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((self.path / "saved_model.pb").read_bytes())
        self.signature_defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items() if not k.startswith("__")}

    def _signature(self, name: str):
        name = name or signatures.DEFAULT
        if name not in self.signature_defs:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"Serving signature name: \"{name}\" not found in signature def")
        return name, self.loaded.signatures[name]

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a signature on named numpy inputs; errors become RequestError(400)."""
        name, fn = self._signature(signature)
        expected = dict(self.signature_defs[name].inputs)
        if set(inputs) != set(expected):
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f"signature {name} takes inputs {sorted(expected)}, got {sorted(inputs)}")
        sizes = {len(v) if np.ndim(v) else 1 for v in inputs.values()}
        if max(sizes) > self.max_batch:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"batch of {max(sizes)} exceeds this server's limit of "
                                                       f"{self.max_batch} (--max-batch)")
        try:
            tensors = {k: tf.constant(v, dtype=tf.dtypes.as_dtype(expected[k].dtype)) for k, v in inputs.items()}
            return {k: v.numpy() for k, v in fn(**tensors).items()}
        except (tf.errors.OpError, ValueError, TypeError) as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, clean_error(e)) from None

    def classify(self, examples: list[bytes], signature: str = "") -> tuple[np.ndarray, np.ndarray]:
        name = signature or signatures.CLASSIFY
        if self.signature_defs.get(name) is None or self.signature_defs[name].method_name != signatures.CLASSIFY_METHOD:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"signature {name!r} is not a classify signature")
        out = self.run(name, {signatures.EXAMPLE_INPUT: np.array(examples, dtype=object)})
        return out["classes"], out["scores"]

    def status(self) -> dict:
        return {"model_version_status": [{"version": str(self.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata_proto(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.signature_defs.items():
            sig_map.signature_def[k].CopyFrom(v)
        return sig_map

    def metadata(self) -> dict:
        from google.protobuf import json_format

        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
                "metadata": {"signature_def": json_format.MessageToDict(self.metadata_proto(),
                                                                        preserving_proto_field_name=True)}}


class Registry:
    def __init__(self, models: Sequence[ServedModel]):
        self.models = {m.name: m for m in models}

    def get(self, name: str, version: str | int | None) -> ServedModel:
        model = self.models.get(name)
        if model is None or (version not in (None, "", 0) and int(version) != model.version):
            what = f"Specific({name}, {version})" if version not in (None, "", 0) else f"Latest({name})"
            raise RequestError(HTTPStatus.NOT_FOUND, f"Servable not found for request: {what}")
        return model


def _decode_value(value, dtype: str):
    """A JSON instance value to a numpy-ready value: {"b64": ...} -> bytes; strings for DT_STRING -> bytes."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "invalid base64 in a {\"b64\": ...} value") from None
    if isinstance(value, list):
        return [_decode_value(v, dtype) for v in value]
    if isinstance(value, str) and dtype == "DT_STRING":
        return value.encode()
    return value


def _to_json(value: np.ndarray):
    if value.dtype == object or value.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value).tolist() \
            if value.size else value.tolist()
    return value.tolist()


def handle_predict(model: ServedModel, body: dict) -> dict:
    name = body.get("signature_name") or signatures.DEFAULT
    model._signature(name)
    input_defs = {k: tf.dtypes.as_dtype(v.dtype).name for k, v in model.signature_defs[name].inputs.items()}
    proto_dtype = {k: "DT_STRING" if d == "string" else d for k, d in input_defs.items()}
    if ("instances" in body) == ("inputs" in body):
        raise RequestError(HTTPStatus.BAD_REQUEST, "request must have exactly one of 'instances' or 'inputs'")
    only = next(iter(input_defs)) if len(input_defs) == 1 else None
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise RequestError(HTTPStatus.BAD_REQUEST, "'instances' must be a non-empty list")
        if all(isinstance(r, dict) and "b64" not in r for r in rows):
            missing = [k for k in input_defs if any(k not in r for r in rows)]
            if missing:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"instances lack input(s) {missing}")
            columns = {k: [_decode_value(r[k], proto_dtype[k]) for r in rows] for k in input_defs}
        elif only:
            columns = {only: [_decode_value(r, proto_dtype[only]) for r in rows]}
        else:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"instances must be objects with keys {sorted(input_defs)}")
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and "b64" not in inputs:
            columns = {k: _decode_value(v, proto_dtype.get(k, "")) for k, v in inputs.items()}
        elif only:
            columns = {only: _decode_value(inputs, proto_dtype[only])}
        else:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"'inputs' must be an object with keys {sorted(input_defs)}")
    arrays = {k: np.array(v, dtype=object) if proto_dtype.get(k) == "DT_STRING" else np.array(v)
              for k, v in columns.items()}
    out = model.run(name, arrays)
    if "instances" in body:
        n = len(next(iter(out.values())))
        return {"predictions": [{k: _to_json(v[i]) for k, v in out.items()} for i in range(n)]}
    return {"outputs": {k: _to_json(v) for k, v in out.items()}}


def handle_classify(model: ServedModel, body: dict) -> dict:
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise RequestError(HTTPStatus.BAD_REQUEST, "'examples' must be a non-empty list")
    context = body.get("context", {})
    serialized = []
    for ex in examples:
        features = {}
        for key, value in {**context, **ex}.items():
            values = value if isinstance(value, list) else [value]
            values = [_decode_value(v, "DT_STRING") for v in values]
            if all(isinstance(v, bytes) for v in values):
                features[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
            elif all(isinstance(v, int) for v in values):
                features[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
            else:
                features[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
        serialized.append(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    classes, scores = model.classify(serialized, body.get("signature_name", ""))
    return {"results": [[[c.decode(), float(s)] for c, s in zip(cr, sr, strict=True)]
                        for cr, sr in zip(classes, scores, strict=True)]}


def make_handler(registry: Registry, max_body_bytes: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tf_transfer-serve"

        def log_message(self, format, *args):  # route access logs through logging
            log.debug("%s - %s", self.address_string(), format % args)

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            match = _ROUTE.match(self.path.split("?")[0])
            if not match:
                raise RequestError(HTTPStatus.NOT_FOUND, f"Malformed request: {self.command} {self.path}")
            return registry.get(match["name"], match["version"]), match["rest"] or ""

        def do_GET(self):
            try:
                model, rest = self._route()
                if rest == "/metadata":
                    return self._send(HTTPStatus.OK, model.metadata())
                if rest:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"Malformed request: GET {self.path}")
                return self._send(HTTPStatus.OK, model.status())
            except RequestError as e:
                return self._send(e.status, {"error": str(e)})

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_body_bytes:
                    self.close_connection = True
                    # Read (and drop) a moderately oversized body so the client is not cut off mid-send
                    # and gets the 413; beyond 8x the limit, just close.
                    remaining = length if length <= 8 * max_body_bytes else 0
                    while remaining > 0:
                        chunk = self.rfile.read(min(1 << 16, remaining))
                        if not chunk:
                            break
                        remaining -= len(chunk)
                    raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                       f"request body of {length} bytes exceeds the limit of {max_body_bytes}")
                raw = self.rfile.read(length)
                model, rest = self._route()
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RequestError(HTTPStatus.BAD_REQUEST, f"JSON Parse error: {e}") from None
                if not isinstance(body, dict):
                    raise RequestError(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
                if rest == ":predict":
                    return self._send(HTTPStatus.OK, handle_predict(model, body))
                if rest == ":classify":
                    return self._send(HTTPStatus.OK, handle_classify(model, body))
                raise RequestError(HTTPStatus.NOT_FOUND, f"Malformed request: POST {self.path}")
            except RequestError as e:
                return self._send(e.status, {"error": str(e)})
            except Exception as e:  # never let one request take the server down
                log.exception("internal error")
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {e}"})

    return Handler


def make_grpc_server(registry: Registry, address: str, max_message_bytes: int):
    """A grpc.Server with PredictionService and ModelService over the registry (not started)."""
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def lookup(spec, context):
        version = spec.version.value if spec.HasField("version") else None
        try:
            return registry.get(spec.name, version)
        except RequestError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))

    def guarded(fn):
        def wrapper(self, request, context):
            try:
                return fn(self, request, context)
            except RequestError as e:
                not_found = e.status == HTTPStatus.NOT_FOUND
                context.abort(grpc.StatusCode.NOT_FOUND if not_found else grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return wrapper

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        @guarded
        def Predict(self, request, context):
            model = lookup(request.model_spec, context)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = model.run(request.model_spec.signature_name, inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name, response.model_spec.version.value = model.name, model.version
            for k, v in out.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response

        @guarded
        def Classify(self, request, context):
            model = lookup(request.model_spec, context)
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
            classes, scores = model.classify(examples, request.model_spec.signature_name)
            response = classification_pb2.ClassificationResponse()
            response.model_spec.name, response.model_spec.version.value = model.name, model.version
            for cr, sr in zip(classes, scores, strict=True):
                result = response.result.classifications.add()
                for c, s in zip(cr, sr, strict=True):
                    result.classes.add(label=c.decode(), score=float(s))
            return response

        @guarded
        def GetModelMetadata(self, request, context):
            model = lookup(request.model_spec, context)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name, response.model_spec.version.value = model.name, model.version
            response.metadata["signature_def"].Pack(model.metadata_proto())
            return response

    class Status(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            model = lookup(request.model_spec, context)
            response = get_model_status_pb2.GetModelStatusResponse()
            response.model_version_status.add(version=model.version,
                                               state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            return response

    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Status(), server)
    port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port


class LocalServer:
    """REST (and optionally gRPC) front ends over some exported models; start() returns at once."""

    def __init__(self, model_dirs: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8501,
                 grpc_port: int | None = 8500, max_batch: int = 64, max_body_mb: float = 32.0):
        self.registry = Registry([ServedModel(d, max_batch) for d in model_dirs])
        max_body = int(max_body_mb * (1 << 20))
        self.http = ThreadingHTTPServer((host, port), make_handler(self.registry, max_body))
        self.http.daemon_threads = True
        self.port = self.http.server_address[1]
        self.grpc = None
        self.grpc_port = None
        if grpc_port is not None:
            self.grpc, self.grpc_port = make_grpc_server(self.registry, f"{host}:{grpc_port}", max_body)
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def start(self) -> LocalServer:
        self._thread.start()
        if self.grpc:
            self.grpc.start()
        return self

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        if self.grpc:
            self.grpc.stop(grace=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders <export_dir>/<name> (the latest version is served)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (TF Serving's default 8501)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (8500); -1 turns gRPC off")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch a request may carry")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MB")
    args = parser.parse_args(argv)
    from tf_transfer import cli

    cli.setup_logging()
    try:
        server = LocalServer(args.models, args.host, args.port, None if args.grpc_port < 0 else args.grpc_port,
                             args.max_batch, args.max_body_mb).start()
    except (export.ExportError, OSError) as e:
        cli.fail(str(e))
    for name, model in server.registry.models.items():
        log.info("Serving %s version %d from %s", name, model.version, model.path)
    log.info("REST: http://%s:%d/v1/models/<name>[:predict|:classify|/metadata]", args.host, server.port)
    if server.grpc_port:
        log.info("gRPC: %s:%d", args.host, server.grpc_port)
    log.info("A development server: use TF Serving in production (see the README). Ctrl-C stops it.")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
