"""TF Serving's REST API over the served models: routes, and the JSON of predict and classify.

    GET  /v1/models/<name>[/versions/<v>]             status of the loaded versions
    GET  /v1/models/<name>[/versions/<v>]/metadata    signature definitions
    POST /v1/models/<name>[/versions/<v>]:predict     {"instances": [...]} or {"inputs": ...}
    POST /v1/models/<name>[/versions/<v>]:classify    {"examples": [...]}

and, beside TF Serving's API, a page to try the models in a browser:

    GET  /                                            the page (static; it calls :predict like any client)
    GET  /ui/models                                   the served models, their versions and input kind
    GET  /ui/card/<name>/<version>                    a model card: labels, config and metrics of the export

Every input is checked against its signature's declared rank, sizes and dtype before anything is
converted or decoded (``serving.inputs``); API answers are JSON, errors as {"error": "..."}.
"""

from __future__ import annotations

import html
import json
import re
from http import HTTPStatus
from pathlib import Path

import numpy as np

from tf_transfer.folders import ModelDir
from tf_transfer.serving.inputs import bad_request, decode_b64, encode_text
from tf_transfer.serving.registry import Registry, RequestError, ServedVersion, ServeLimits, internal_error
from tf_transfer.serving.rest import Request, Response

PAGE = Path(__file__).resolve().parents[1] / "assets" / "page.html"
_CARD = re.compile(r"^/ui/card/(?P<name>[^/]+)/(?P<version>[0-9]{1,18})$")
# The page runs its own inline script and style, and talks to this server only.
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                            "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:",
                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,18}))?(?P<rest>:predict|:classify|/metadata)?$")


def decode_value(value):
    """A tf.Example feature value of a :classify request: {"b64": ...} and strings -> bytes, numbers as they are."""
    if isinstance(value, dict):
        return decode_b64(value, "examples")
    if isinstance(value, str):
        return encode_text(value, "examples")
    return value


def to_json(value: np.ndarray):
    if value.dtype == object or value.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value).tolist() \
            if value.size else value.tolist()
    return value.tolist()


def _columns(body: dict, names: list[str], limits: ServeLimits) -> tuple[dict, bool]:
    """{input name: JSON value with the batch first} from the row ('instances') or columnar ('inputs')
    format, nothing converted yet; True for rows."""
    if ("instances" in body) == ("inputs" in body):
        raise bad_request("request must have exactly one of 'instances' or 'inputs'")
    only = names[0] if len(names) == 1 else None
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise bad_request("'instances' must be a non-empty list")
        limits.check_batch(len(rows))
        if all(isinstance(r, dict) and "b64" not in r for r in rows):
            missing = sorted({k for k in names for r in rows if k not in r})
            if missing:
                raise bad_request(f"instances lack input(s) {missing}")
            return {k: [r[k] for r in rows] for k in names}, True
        if only:
            return {only: rows}, True
        raise bad_request(f"instances must be objects with keys {sorted(names)}")
    inputs = body["inputs"]
    if isinstance(inputs, dict) and "b64" not in inputs:
        return dict(inputs), False
    if only:
        return {only: inputs}, False
    raise bad_request(f"'inputs' must be an object with keys {sorted(names)}")


def predict(model: ServedVersion, body: dict, limits: ServeLimits) -> dict:
    name, _ = model.signature(body.get("signature_name") or "")
    specs = model.input_specs(name)
    columns, rows = _columns(body, list(specs), limits)
    unknown = sorted(set(columns) - set(specs))
    if unknown:
        raise bad_request(f"signature {name} takes inputs {sorted(specs)}, got {sorted(columns)}")
    out = model.run(name, {k: specs[k].from_json(v, limits) for k, v in columns.items()})
    if rows:
        n = len(next(iter(out.values())))
        return {"predictions": [{k: to_json(v[i]) for k, v in out.items()} for i in range(n)]}
    return {"outputs": {k: to_json(v) for k, v in out.items()}}


def _feature(values: list):
    import tensorflow as tf

    if all(isinstance(v, bytes) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
    raise RequestError(HTTPStatus.BAD_REQUEST, "example features must be lists of bytes, ints or floats")


def classify(model: ServedVersion, body: dict, limits: ServeLimits) -> dict:
    import tensorflow as tf

    examples, context = body.get("examples"), body.get("context", {})
    if not isinstance(examples, list) or not examples:
        raise RequestError(HTTPStatus.BAD_REQUEST, "'examples' must be a non-empty list")
    if not isinstance(context, dict) or not all(isinstance(ex, dict) for ex in examples):
        raise RequestError(HTTPStatus.BAD_REQUEST, "'examples' must be objects (and 'context' an object)")
    limits.check_batch(len(examples))
    serialized = []
    for ex in examples:
        features = {}
        for key, value in {**context, **ex}.items():
            values = [decode_value(v) for v in (value if isinstance(value, list) else [value])]
            features[key] = _feature(values)
        serialized.append(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    classes, scores = model.classify(serialized, body.get("signature_name", ""))
    return {"results": [[[c.decode("utf-8", "replace"), float(s)] for c, s in zip(cr, sr, strict=True)]
                        for cr, sr in zip(classes, scores, strict=True)]}


class RestApp:
    """Request -> Response for the REST API; never raises."""

    def __init__(self, registry: Registry, limits: ServeLimits):
        self.registry, self.limits = registry, limits

    def __call__(self, request: Request) -> Response:
        try:
            if request.method == "GET" and (request.path.split("?")[0] == "/" or request.path.startswith("/ui/")):
                return self.ui(request.path.split("?")[0])
            return Response(HTTPStatus.OK, self.route(request))
        except RequestError as e:
            return Response(e.status, {"error": str(e)})
        except Exception:  # never let one request take the server down, nor leak internals
            e = internal_error(f"{request.method} {request.path[:200]}")
            return Response(e.status, {"error": str(e)})

    def route(self, request: Request) -> dict:
        match = _ROUTE.match(request.path.split("?")[0])
        if not match:
            raise RequestError(HTTPStatus.NOT_FOUND, f"Malformed request: {request.method} {request.path[:200]}")
        rest = match["rest"] or ""
        if request.method == "GET" and rest in ("", "/metadata"):
            if rest == "/metadata":
                return self.metadata(self.registry.get(match["name"], match["version"]))
            self.registry.get(match["name"], match["version"])
            return self.registry.models[match["name"]].status()
        if request.method == "POST" and rest in (":predict", ":classify"):
            model = self.registry.get(match["name"], match["version"])
            body = self._json(request.body)
            return predict(model, body, self.limits) if rest == ":predict" else classify(model, body, self.limits)
        allowed = "GET" if rest in ("", "/metadata") else "POST"
        raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here; use {allowed}")

    def ui(self, path: str) -> Response:
        """The try-it page, the model list it reads, and model cards."""
        if path == "/":
            return Response(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8", dict(_PAGE_HEADERS))
        if path == "/ui/models":
            return Response(HTTPStatus.OK, {"models": [
                {"name": name, "versions": [str(v) for v in sorted(m.versions, reverse=True)],
                 "input": m.get(None).input_kind()} for name, m in sorted(self.registry.models.items())]})
        match = _CARD.match(path)
        if not match:
            raise RequestError(HTTPStatus.NOT_FOUND, f"Malformed request: GET {path[:200]}")
        card = model_card(self.registry.get(match["name"], match["version"]))
        return Response(HTTPStatus.OK, card.encode(), "text/html; charset=utf-8", dict(_PAGE_HEADERS))

    @staticmethod
    def _json(raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"JSON Parse error: {str(e)[:200]}") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
        return body

    @staticmethod
    def metadata(model: ServedVersion) -> dict:
        from google.protobuf import json_format

        spec = {"name": model.path.parent.name, "signature_name": "", "version": str(model.version)}
        return {"model_spec": spec, "metadata": {"signature_def": json_format.MessageToDict(
            model.metadata_proto(), preserving_proto_field_name=True)}}


def model_card(model: ServedVersion) -> str:
    """A self-contained HTML page: the export's labels, metrics and config (every value escaped)."""
    def read(name: str) -> str:
        path = model.path / name
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""

    labels = {"": [line for line in read(ModelDir.LABELS).splitlines() if line]}
    if read(ModelDir.TASKS):  # several heads: a list of labels per task
        try:
            labels = {t["name"]: t["class_names"] for t in json.loads(read(ModelDir.TASKS))["tasks"]}
        except (json.JSONDecodeError, KeyError, TypeError):
            labels = {}
    metrics, config = read(ModelDir.METRICS), read(ModelDir.CONFIG)
    items = "".join((f"<h3>{html.escape(task)}</h3>" if task else "") +
                    "<ol>" + "".join(f"<li>{html.escape(str(label))}</li>" for label in names) + "</ol>"
                    for task, names in labels.items())
    title = html.escape(f"{model.path.parent.name}, version {model.version}")
    sections = [("Labels", items), ("Metrics", f"<pre>{html.escape(metrics)}</pre>"),
                ("Config", f"<pre>{html.escape(config)}</pre>")]
    body = "".join(f"<h2>{name}</h2>{content}" for name, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:"
            f"system-ui,sans-serif;max-width:980px;margin:2em auto}}pre{{background:#f7f7f7;padding:.8em;"
            f"overflow-x:auto;font-size:12px}}</style></head><body><h1>{title}</h1>{body}</body></html>")
