"""The local server against hostile and unlucky clients: framing, stalls, huge tensors, client mistakes,
aborted connections, and new versions appearing while it serves."""

from __future__ import annotations

import base64
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tf_transfer import serving
from tf_transfer.folders import ModelDir
from tf_transfer.serving import rest
from tf_transfer.serving import server as serve

from .test_hardening import FRAME_BOMBS, jpeg


def predict_request(model: str, signature: str, name: str, dtype, dims: list[int], values: list[int]):
    """A gRPC PredictRequest with one input tensor of any declared shape and the given values."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    proto = request.inputs[name]
    proto.dtype = dtype.as_datatype_enum
    proto.tensor_shape.dim.extend([proto.tensor_shape.Dim(size=d) for d in dims])
    if dtype == tf.string:
        proto.string_val.extend(bytes([v % 256]) * max(v, 1) for v in values)
    elif dtype == tf.bool:
        proto.bool_val.extend(bool(v % 2) for v in values)
    elif dtype == tf.int64:
        proto.int64_val.extend(values)
    elif dtype.is_integer:
        proto.int_val.extend(values)
    elif dtype == tf.float64:
        proto.double_val.extend(float(v) for v in values)
    else:
        proto.float_val.extend(float(v) for v in values)
    return request


def raw_request(port: int, data: bytes, read_timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes, return (status, body) of the answer (status 0 if the server closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
                    b"content-length:")]
                if length and len(body) >= length[0]:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    text = b"".join(chunks)
    if not text:
        return 0, b""
    return int(text.split(b" ", 2)[1]), text.partition(b"\r\n\r\n")[2]


def post(port: int, path: str, body: bytes, extra: str = "") -> tuple[int, dict]:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    status, payload = raw_request(port, head.encode() + body)
    return status, json.loads(payload) if payload else {}


def served_copy(export_path: Path, folder: Path, name: str) -> Path:
    """A model folder <folder>/<name>/1 holding a copy of one export, for a server to watch."""
    shutil.copytree(export_path, folder / name / "1")
    return folder / name


@pytest.fixture(scope="module")
def model_root(trained_run, tmp_path_factory) -> Path:
    return served_copy(trained_run.export_path, tmp_path_factory.mktemp("served"), "shapes")


@pytest.fixture(scope="module")
def server(model_root):
    srv = serve.LocalServer([model_root], port=0, grpc_port=0, max_batch=16, max_body_mb=1, poll_seconds=0.2).start()
    yield srv
    srv.stop()


class ServerProcess:
    """`python -m tf_transfer.serve` in a process of its own, so that a crash shows as a dead process."""

    def __init__(self, roots: list[Path], log: Path):
        self.log = log
        self.out = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tf_transfer.serve", *map(str, roots), "--port", "0",
                                      "--grpc-port", "0", "--max-batch", "16", "--poll-seconds", "0"],
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.port = self.grpc_port = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None and not self.grpc_port:
            time.sleep(0.2)
            for line in log.read_text().splitlines():
                if "REST: http://" in line:
                    self.port = int(line.split("REST: http://")[1].split("/")[0].rsplit(":", 1)[1])
                if "gRPC: " in line:
                    self.grpc_port = int(line.rsplit(":", 1)[1])
        if not (self.alive() and self.port and self.grpc_port):
            self.stop()  # never left running behind a failed start
            raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()


@pytest.fixture(scope="module")
def text_root(text_run, tmp_path_factory) -> Path:
    return served_copy(text_run.export_path, tmp_path_factory.mktemp("served_text"), "reviews")


@pytest.fixture(scope="module")
def server_process(model_root, text_root, tmp_path_factory):
    """The image export (as 'shapes') and the text export (as 'reviews') served by a process of their own."""
    proc = ServerProcess([model_root, text_root], tmp_path_factory.mktemp("serve_log") / "serve.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def both_server(model_root, text_root):
    """The image and the text export served in this process (a crash would end the test's worker)."""
    srv = serve.LocalServer([model_root, text_root], port=0, grpc_port=0, max_batch=16, max_body_mb=1,
                            poll_seconds=0).start()
    yield srv
    srv.stop()


# --- the HTTP front end, with a trivial app and short timeouts ------------------------------------------

@pytest.fixture()
def echo():
    limits = rest.Limits(max_body_bytes=1000, header_timeout=0.5, idle_timeout=1.0, workers=2, max_pending=2)
    app = lambda request: rest.Response(200, {"bytes": len(request.body)})  # noqa: E731
    srv = rest.HttpServer(app, "127.0.0.1", 0, limits).start()
    yield srv
    srv.stop()


def test_content_length_must_be_a_plain_number(echo):
    assert raw_request(echo.port, b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n" + b"x" * 5000)[0] == 400
    assert raw_request(echo.port, b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n")[0] == 400
    assert raw_request(echo.port, b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")[0] == 400
    assert raw_request(echo.port, b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000)[0] == 413
    assert raw_request(echo.port, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello") == (200, b'{"bytes": 5}')


def test_chunked_bodies_are_refused_and_cannot_desync_keep_alive(echo):
    smuggled = (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                b"GET /smuggled HTTP/1.1\r\n\r\n")
    status, body = raw_request(echo.port, smuggled)
    assert status == 501 and b"smuggled" not in body and body.count(b"HTTP/1.1") == 0


def test_keep_alive_answers_requests_in_order(echo):
    two = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab" + b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    with socket.create_connection(("127.0.0.1", echo.port), timeout=5) as s:
        s.sendall(two)
        time.sleep(0.3)
        data = s.recv(65536)
    assert data.count(b"HTTP/1.1 200") == 2 and data.index(b'"bytes": 2') < data.index(b'"bytes": 3')


def test_stalled_clients_are_cut_off_and_hold_no_thread(echo):
    threads = threading.active_count()
    stalled = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", echo.port), timeout=5)
        s.sendall(b"POST / HTTP/1.1\r\nContent-Le")  # headers that never finish
        stalled.append(s)
    slow_body = socket.create_connection(("127.0.0.1", echo.port), timeout=5)
    slow_body.sendall(b"POST / HTTP/1.1\r\nContent-Length: 900\r\n\r\nabc")  # a body that never finishes
    started = time.monotonic()
    assert raw_request(echo.port, b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")[0] == 200
    assert time.monotonic() - started < 2.0, "a real request waited behind stalled ones"
    assert threading.active_count() <= threads + 4
    time.sleep(2.0)  # past the header and body deadlines
    assert all(s.recv(10) == b"" for s in stalled[:20]) and slow_body.recv(10) == b""
    for s in [*stalled, slow_body]:
        s.close()


def test_a_full_queue_answers_503_at_once():
    release = threading.Event()

    def slow(request):
        release.wait(10)
        return rest.Response(200, {})

    srv = rest.HttpServer(slow, "127.0.0.1", 0, rest.Limits(workers=1, max_pending=1)).start()
    try:
        waiting = [threading.Thread(target=raw_request, args=(srv.port, b"GET / HTTP/1.1\r\n\r\n")) for _ in range(2)]
        for t in waiting:
            t.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert raw_request(srv.port, b"GET / HTTP/1.1\r\n\r\n")[0] == 503
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        srv.stop()


# --- the model server ------------------------------------------------------------------------------------

def test_client_mistakes_are_400_with_a_message(server):
    path = "/v1/models/shapes:predict"
    bad = [b'{"instances": [{"b64": 5}]}', b'{"instances": [{"b64": "!!!"}]}', b'{"instances": []}', b"[]",
           b"not json", b'{"instances": [1], "inputs": [1]}', b"[" * 50000 + b"]" * 50000,
           b'{"signature_name": "serving_pixels", "inputs": {"pixels": [[[[1, 2, 3]]], [[[1]]]]}}',
           b'{"signature_name": "serving_pixels", "inputs": {"pixels": "text"}}',
           b'{"signature_name": "nope", "instances": [1]}']
    for body in bad:
        status, answer = post(server.port, path, body)
        assert status == 400 and answer["error"], (body[:40], status, answer)
    status, answer = post(server.port, "/v1/models/shapes:classify", b'{"examples": [1, 2]}')
    assert status == 400 and "objects" in answer["error"]
    assert raw_request(server.port, b"GET /v1/models/shapes:predict HTTP/1.1\r\n\r\n")[0] == 405
    assert raw_request(server.port, b"GET /v1/nothing HTTP/1.1\r\n\r\n")[0] == 404
    assert raw_request(server.port, b"GET /v1/models/shapes/versions/x HTTP/1.1\r\n\r\n")[0] == 404


def test_batches_are_refused_before_anything_is_decoded(server):
    body = json.dumps({"instances": [{"b64": "A" * 40000}] * 20}).encode()  # 20 > --max-batch 16
    started = time.monotonic()
    status, answer = post(server.port, "/v1/models/shapes:predict", body)
    assert status == 400 and "exceeds this server's limit of 16" in answer["error"]
    assert time.monotonic() - started < 2.0


def peak_rss_growth_mb(action) -> float:
    """How far this process's peak resident memory rises while `action` runs (the kernel's high-water
    mark is reset first, so an earlier peak cannot hide this one)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    action()
    return (_status_kb("VmHWM") - before) / 1024


def _status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_frames_larger_than_their_headers_are_400_at_once_without_memory(server):
    bodies = {name: json.dumps({"instances": [{"b64": base64.b64encode(blob).decode()}] * 4}).encode()
              for name, blob in FRAME_BOMBS.items()}
    post(server.port, "/v1/models/shapes:predict", next(iter(bodies.values())))  # warms this worker's server up
    answers = []
    for name, body in bodies.items():
        started = time.monotonic()
        growth = peak_rss_growth_mb(lambda body=body: answers.append(post(server.port, "/v1/models/shapes:predict",
                                                                          body)))
        status, answer = answers[-1]
        assert status == 400 and "larger than the limit" in answer["error"], (name, status, answer)
        assert time.monotonic() - started < 2.0, name  # the old code decoded them (+253 MB)
        assert growth < 100, (name, growth)


def test_internal_errors_say_nothing_inside(server, monkeypatch, caplog):
    from tf_transfer.serving.registry import ServedVersion

    def broken(self, *args, **kwargs):
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(ServedVersion, "run", broken)
    with caplog.at_level(logging.ERROR):
        status, answer = post(server.port, "/v1/models/shapes:predict", b'{"instances": [{"b64": "AAAA"}]}')
    assert status == 500 and "internal error (id " in answer["error"] and "secret" not in answer["error"]
    error_id = answer["error"].split("id ")[1].split(")")[0]
    assert error_id in caplog.text and "secret internal detail" in caplog.text  # the operator sees it


def test_aborted_connections_do_not_flood_the_log(server, caplog):
    with caplog.at_level(logging.DEBUG, logger="tf_transfer"):
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(b"POST /v1/models/shapes:predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"inst")
    time.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in caplog.text


def test_grpc_splat_tensors_are_refused_before_expansion(server):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cases = [("serving_pixels", "pixels", tf.float32, [1, 40000, 40000, 3]),
             ("serving_pixels", "pixels", tf.float32, [1, 1, 2_000_000_000, 3]),
             ("serving_default", "image_bytes", tf.string, [1_000_000]),
             ("serving_pixels", "pixels", tf.float32, [10**6, 1, 1, 3])]
    for signature, name, dtype, shape in cases:
        request = predict_request("shapes", signature, name, dtype, shape, [0])
        assert len(request.SerializeToString()) < 100
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: nothing was expanded


def test_new_versions_are_served_and_incomplete_ones_never(server, model_root, trained_run):
    client = serving.RestClient(f"http://127.0.0.1:{server.port}", "shapes", timeout=30)
    (model_root / "7").mkdir()  # incomplete: no saved_model.pb
    broken = model_root / "8"
    shutil.copytree(trained_run.export_path, broken)
    (broken / ModelDir.SAVED_MODEL).write_bytes(b"not a saved model")
    time.sleep(1.0)
    assert [v["version"] for v in client.status()["model_version_status"]] == ["1"]
    staged = model_root / ".staging"
    shutil.copytree(trained_run.export_path, staged)
    assert ModelDir(model_root).publish(staged).name == "9"
    assert server.wait_for_version("shapes", 9, timeout=30)
    deadline = time.monotonic() + 10  # the old version is unloaded right after the new one is serving
    while [v["version"] for v in client.status()["model_version_status"]] != ["9"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [v["version"] for v in client.status()["model_version_status"]] == ["9"]  # latest policy: 1 unloaded
    assert client.predict([jpeg(64)])[0].top_classes
    with pytest.raises(serving.ModelNotFound):
        serving.RestClient(f"http://127.0.0.1:{server.port}", "shapes", version=1).predict([jpeg(64)])


def test_the_all_policy_serves_every_complete_version(model_root, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(model_root / "1", root / "1")
    shutil.copytree(model_root / "1", root / "2")
    srv = serve.LocalServer([root], port=0, grpc_port=None, version_policy="all", poll_seconds=0).start()
    try:
        for version in (1, 2):
            client = serving.RestClient(f"http://127.0.0.1:{srv.port}", "m", version=version)
            assert client.predict([jpeg(64)])[0].top_classes
    finally:
        srv.stop()
    with pytest.raises(Exception, match="--version-policy"):
        serve.LocalServer([root], port=0, grpc_port=None, version_policy="newest")


def nested(depth: int, leaf: str = '"a"') -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


@pytest.mark.parametrize("model", ["shapes", "reviews"])
def test_a_deep_request_is_400_and_the_server_lives(both_server, model):
    """A 90-byte body of rank 33 crashed the process (TensorFlow converts a rank-33 string array with SIGSEGV)."""
    path = f"/v1/models/{model}:predict"
    expected = "a list of strings" if model == "reviews" else "a list of base64 images"
    for depth in (33, 65, 2, 0):
        body = b'{"inputs": "a"}' if depth == 0 else b'{"instances": ' + nested(depth) + b"}"
        status, answer = post(both_server.port, path, body)
        assert status == 400 and expected in answer["error"] and f"got rank {depth}" in answer["error"], \
            (depth, status, answer)
    status, answer = post(both_server.port, path, b'{"inputs": ' + nested(33) + b"}")
    assert status == 400 and "got rank 33" in answer["error"]
    status, answer = post(both_server.port, path, b'{"instances": ["\\ud800"]}')  # a lone surrogate
    assert status == 400 and "not valid Unicode" in answer["error"], answer
    status, answer = post(both_server.port, path, b'{"instances": ["ok", 7]}')
    assert status == 400 and "value 1 is int" in answer["error"], answer


def test_grpc_tensors_of_the_wrong_rank_or_dtype_are_invalid_argument(both_server):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{both_server.grpc_port}"))
    cases = [("reviews", "text", tf.string, [1] * 33, "got rank 33"),
             ("shapes", "image_bytes", tf.string, [1] * 64, "got rank 64"),
             ("reviews", "text", tf.string, [], "got rank 0"),
             ("reviews", "text", tf.int64, [1], "got int64 values"),
             ("shapes", "pixels", tf.float32, [1, 2, 2, 4], "got size 4 on axis 3")]
    for model, name, dtype, dims, message in cases:
        signature = "serving_pixels" if name == "pixels" else ""
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(predict_request(model, signature, name, dtype, dims, [1]), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), \
            (dims, e.value.details())


def test_the_server_still_answers_after_all_of_this(server):
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg(64)).decode()}]}).encode()
    status, answer = post(server.port, "/v1/models/shapes:predict", body)
    assert status == HTTPStatus.OK and np.isclose(sum(answer["predictions"][0]["scores"]), 1.0, atol=1e-4)
