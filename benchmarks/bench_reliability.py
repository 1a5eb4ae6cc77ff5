"""Reliability of what reaches TF Serving and of runs: the load the local server holds with stalled
connections open, the hostile inputs each front end was given and what it answered, and kills survived
by resumable runs.

    python -m benchmarks.bench_reliability     # prints JSON; benchmarks.run writes it into BENCHMARKS.md
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import spread

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _train(workdir: Path, name: str, extra=()) -> list[str]:
    from tf_transfer.data import demo

    data = demo.write_shapes(workdir / "shapes", per_class=30, size=64, seed=1)
    return [sys.executable, "-m", "tf_transfer.train", "--data", str(data), "--name", name, "--runs-dir",
            str(workdir / "runs"), "--export-dir", str(workdir / "saved_models"), "--image-size", "32",
            "--batch-size", "8", "--phase1-epochs", "6", "--phase2-epochs", "4", "--phase1-patience", "0",
            "--phase2-patience", "0", "--feature-cache", "off", "--no-report", *extra]


def _history(workdir: Path, name: str) -> list[dict]:
    """Every epoch record written so far, repeats included (epochs.jsonl, read raw)."""
    from tf_transfer.folders import RunDir

    runs = sorted(p for p in (workdir / "runs" / name).glob("*") if (p / RunDir.HISTORY_LOG).is_file())
    return [json.loads(line) for line in (runs[0] / RunDir.HISTORY_LOG).read_text().splitlines()] if runs else []


def _kill_when(args: list[str], ready, timeout: float = 300) -> None:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def faults(workdir: Path) -> list[dict]:
    """SIGKILL in phase 1, in phase 2 and during the export, then --resume: does the run finish, with
    which epochs re-run and how many versions exported?"""
    out = []
    moments = {
        "phase 1, epoch 3": lambda name: any(e["phase"] == 1 and e["epoch"] >= 3 for e in _history(workdir, name)),
        "phase 2, epoch 8": lambda name: any(e["phase"] == 2 and e["epoch"] >= 8 for e in _history(workdir, name)),
        "during the export": lambda name: any((workdir / "saved_models" / name).glob(".partial-*")),
    }
    for i, (moment, ready) in enumerate(moments.items()):
        name = f"kill{i}"
        _kill_when(_train(workdir, name), lambda name=name, ready=ready: ready(name))
        before = len(_history(workdir, name))
        run_dir = sorted((workdir / "runs" / name).iterdir())[0]
        resumed = subprocess.run([sys.executable, "-m", "tf_transfer.train", "--resume", str(run_dir)],
                                 capture_output=True, text=True, env=ENV, timeout=600)
        epochs = [e["epoch"] for e in _history(workdir, name)]
        versions = sorted(p.name for p in (workdir / "saved_models" / name).iterdir()) \
            if (workdir / "saved_models" / name).is_dir() else []
        out.append({"moment": moment, "resumed_ok": resumed.returncode == 0, "epochs_logged_before_kill": before,
                    "epoch_records_rerun": len(epochs) - len(set(epochs)), "final_epochs": len(set(epochs)),
                    "versions": versions})
    return out


def _export(workdir: Path) -> Path:
    subprocess.run(_train(workdir, "served", ["--no-verify-export"]), check=True, env=ENV,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return workdir / "saved_models" / "served"


def _load(port: int, body: bytes, clients: int, seconds: float) -> dict:
    latencies, errors, stop = [], Counter(), time.monotonic() + seconds
    head = f"POST /v1/models/served:predict HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            while time.monotonic() < stop:
                started = time.perf_counter()
                s.sendall(head + body)
                data = b""
                while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
                        data.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
                    data += s.recv(65536)
                status = int(data.split(b" ", 2)[1])
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[status] += 1
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests_per_s": len(latencies) / seconds, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)), "errors": dict(errors)}


def load(model_dir: Path, stalled: int = 400, clients: int = 4, seconds: float = 8.0, repeats: int = 3) -> dict:
    """Real clients' throughput and latency with no stalled connections and with `stalled` connections
    that send half a header and wait, measured in turns."""
    from PIL import Image

    from tf_transfer.serving.server import LocalServer

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, "JPEG")
    body = json.dumps({"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}] * 4}).encode()
    server = LocalServer([model_dir], port=0, grpc_port=None).start()
    runs: dict[str, list[dict]] = {"clean": [], "stalled": []}
    threads_before = threading.active_count()
    try:
        _load(server.port, body, clients, 2.0)  # warm up
        for _ in range(repeats):
            runs["clean"].append(_load(server.port, body, clients, seconds))
            held = []
            for _ in range(stalled):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
                s.sendall(b"POST /v1/models/served:predict HTTP/1.1\r\nContent-Le")
                held.append(s)
            threads_during = threading.active_count()
            runs["stalled"].append(_load(server.port, body, clients, seconds))
            for s in held:
                s.close()
    finally:
        server.stop()
    ratios = [s["requests_per_s"] / c["requests_per_s"] for c, s in zip(runs["clean"], runs["stalled"], strict=True)]
    return {"stalled_connections": stalled, "clients": clients, "seconds": seconds, "batch": 4, "runs": runs,
            "throughput_ratio": spread(ratios),
            "extra_threads_while_stalled": threads_during - threads_before}


def hostile_inputs(model_dir: Path, count: int = 300) -> dict:
    """Mutated and random inputs against each target: how many, what came back, the slowest answer."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tests.test_fuzz import SEEDS
    from tests.test_server_hardening import raw_request
    from tf_transfer.data import images
    from tf_transfer.serving.server import LocalServer

    rng = np.random.default_rng(0)

    def mutate() -> bytes:
        blob = bytearray(SEEDS[int(rng.integers(len(SEEDS)))])
        for j in rng.integers(0, len(blob), int(rng.integers(1, 8))):
            blob[j] = int(rng.integers(0, 256))
        return bytes(blob[: int(rng.integers(1, len(blob) + 1))])

    decoder = tf.function(lambda b: images.checked_decode(b, 32, 2_000_000),
                          input_signature=[tf.TensorSpec([], tf.string)])
    out, rss = {}, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes, slowest = Counter(), 0.0
    for _ in range(count):
        started = time.perf_counter()
        try:
            decoder(tf.constant(mutate()))
            outcomes["decoded"] += 1
        except tf.errors.InvalidArgumentError:
            outcomes["refused (InvalidArgument)"] += 1
        slowest = max(slowest, time.perf_counter() - started)
    out["export decoder (mutated JPEG/PNG/BMP/WebP/GIF, bombs)"] = {"inputs": count, **outcomes, "slowest_s": slowest}
    server = LocalServer([model_dir], port=0, grpc_port=0, max_batch=16, max_body_mb=1).start()
    try:
        outcomes, slowest = Counter(), 0.0
        for _ in range(count):
            blob = base64.b64encode(mutate()).decode()
            body = rng.choice([json.dumps({"instances": [{"b64": blob}]}), json.dumps({"inputs": blob}),
                               blob[:50], json.dumps({"instances": [[1, [2]], 3]}), "[" * 5000])
            data = body.encode()
            started = time.perf_counter()
            status, _ = raw_request(server.port, f"POST /v1/models/served:predict HTTP/1.1\r\nContent-Length: "
                                                 f"{len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            outcomes[f"HTTP {status}"] += 1
            slowest = max(slowest, time.perf_counter() - started)
        out["REST predict (mutated images, malformed JSON)"] = {"inputs": count, **outcomes, "slowest_s": slowest}
        outcomes, slowest = Counter(), 0.0
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        for _ in range(count):
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.signature_name = "served", "serving_pixels"
            proto = request.inputs["pixels"]
            proto.dtype = tf.float32.as_datatype_enum
            dims = [int(d) for d in rng.integers(-1, 10**6, int(rng.integers(0, 5)))]
            proto.tensor_shape.dim.extend([proto.tensor_shape.Dim(size=d) for d in dims])
            proto.float_val.append(1.0)
            slowest = max(slowest, _predict(stub, request, outcomes))
        out["gRPC Predict (tensor shapes up to 10^6 per dim, one value)"] = {"inputs": count, **outcomes,
                                                                           "slowest_s": slowest}
    finally:
        server.stop()
    out["peak_rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    out.update(ranks_and_dtypes(model_dir, rng, count))
    return out


def _predict(stub, request, outcomes: Counter) -> float:
    """One gRPC Predict: its status counted in `outcomes`; returns its seconds."""
    import grpc

    started = time.perf_counter()
    try:
        stub.Predict(request, timeout=30)
        outcomes["OK"] += 1
    except grpc.RpcError as e:
        outcomes[e.code().name] += 1
    return time.perf_counter() - started


def ranks_and_dtypes(model_dir: Path, rng: np.random.Generator, count: int) -> dict:
    """Inputs of rank 0-64 with mixed value types and dtypes against a server in its own process (rank 33
    string arrays crashed it), which must still be alive after every one."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tests.test_server_hardening import ServerProcess, predict_request, raw_request

    leaves = ['"a"', "7", "-1.5", "true", "null", '{"b64": "AAAA"}', '"\\ud800"', "{}"]
    dtypes = [tf.string, tf.float32, tf.uint8, tf.int64, tf.float64, tf.bool]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess([model_dir], Path(tmp) / "serve.log")
        alive = True
        try:
            outcomes, slowest = Counter(), 0.0
            for _ in range(count):
                depth = int(rng.integers(0, 65))
                inner = ", ".join(rng.choice(leaves, int(rng.integers(1, 4))))
                body = f'{{"{rng.choice(["instances", "inputs"])}": {"[" * depth}{inner}{"]" * depth}}}'.encode()
                started = time.perf_counter()
                status, _ = raw_request(server.port, f"POST /v1/models/served:predict HTTP/1.1\r\nContent-Length: "
                                                     f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                outcomes[f"HTTP {status}"] += 1
                slowest, alive = max(slowest, time.perf_counter() - started), alive and server.alive()
            out["REST predict (JSON of rank 0-64, mixed value types)"] = {"inputs": count, **outcomes,
                                                                         "slowest_s": slowest}
            outcomes, slowest = Counter(), 0.0
            stub = prediction_service_pb2_grpc.PredictionServiceStub(
                grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
            for _ in range(count):
                name, signature = [("image_bytes", ""), ("pixels", "serving_pixels")][int(rng.integers(2))]
                dtype = dtypes[int(rng.integers(len(dtypes)))]
                request = predict_request("served", signature, name, dtype, [1] * int(rng.integers(0, 65)), [1])
                slowest, alive = max(slowest, _predict(stub, request, outcomes)), alive and server.alive()
            out["gRPC Predict (tensors of rank 0-64, every dtype)"] = {"inputs": count, **outcomes,
                                                                      "slowest_s": slowest}
        finally:
            server.stop()
    out["server_process_alive_after_every_input"] = alive
    return out


def run(workdir: Path) -> dict:
    model_dir = _export(workdir)
    return {"load": load(model_dir), "hostile_inputs": hostile_inputs(model_dir), "faults": faults(workdir)}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
