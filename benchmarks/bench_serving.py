"""Serving speed: the exported bytes signature against the Keras model on decoded tensors, and the
local REST server under concurrent clients against in-process calls.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks.common import interleaved, write_photo_like_jpegs
from tf_transfer import serving
from tf_transfer.config import ModelConfig
from tf_transfer.data import images
from tf_transfer.models import backbones
from tf_transfer.models import classifier as model_lib
from tf_transfer.serving import savedmodel
from tf_transfer.serving import server as serve

SIZE = 224


def _percentiles(samples: list[float]) -> dict:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def run(workdir: Path, single_calls: int = 60, batch_repeats: int = 7, clients: int = 4,
        requests_per_client: int = 15) -> dict:
    root = write_photo_like_jpegs(workdir / "jpegs", per_class=12)
    raw = [p.read_bytes() for p in sorted(root.rglob("*.jpg"))][:32]
    bb = backbones.build("mobilenet_v2_0.35", "imagenet", SIZE)
    model = model_lib.build_classifier(bb, 3, ModelConfig())
    path = savedmodel.export_classifier(model, savedmodel.ExportSpec(["a", "b", "c"], SIZE, {}, {}, samples=raw[:2]),
                                        workdir / "exports", "bench")
    serve_fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    decoded = tf.cast(tf.stack([images.decode_and_resize(tf.constant(b), SIZE) for b in raw]), tf.float32)
    batch_bytes = tf.constant(raw)
    for _ in range(3):  # warm up both paths, at both batch sizes
        serve_fn(image_bytes=batch_bytes)
        model.predict_on_batch(decoded)
        serve_fn(image_bytes=batch_bytes[:1])
        model.predict_on_batch(decoded[:1])

    t = interleaved({"bytes_signature": lambda: serve_fn(image_bytes=batch_bytes),
                     "keras_decoded": lambda: model.predict_on_batch(decoded)}, repeats=batch_repeats)
    single_bytes, single_keras = [], []
    one, one_decoded = tf.constant(raw[:1]), decoded[:1]
    for _ in range(single_calls):
        s = time.perf_counter()
        serve_fn(image_bytes=one)
        single_bytes.append(time.perf_counter() - s)
        s = time.perf_counter()
        model.predict_on_batch(one_decoded)
        single_keras.append(time.perf_counter() - s)

    local = serving.LocalModel(path.parent)
    server = serve.LocalServer([path.parent], port=0, grpc_port=None).start()
    try:
        def in_process():
            local.predict(raw[:1])

        latencies: list[float] = []
        lock = threading.Lock()
        warm = serving.RestClient(f"http://127.0.0.1:{server.port}", "bench", timeout=60)
        for _ in range(3):
            warm.predict(raw[:1])

        def client_loop():
            client = serving.RestClient(f"http://127.0.0.1:{server.port}", "bench", timeout=60)
            for _ in range(requests_per_client):
                s = time.perf_counter()
                client.predict(raw[:1])
                with lock:
                    latencies.append(time.perf_counter() - s)

        start = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        server_rps = clients * requests_per_client / (time.perf_counter() - start)
        in_process_s = statistics.median([_time(in_process) for _ in range(30)])
    finally:
        server.stop()
    return {
        "batch32_images_per_s": {k: 32 / v for k, v in t.items()},
        "batch32_overhead": t["bytes_signature"] / t["keras_decoded"],
        "batch32_overhead_spread": t.ratio("bytes_signature", "keras_decoded"),
        "single_bytes": _percentiles(single_bytes),
        "single_keras": _percentiles(single_keras),
        "server": {"clients": clients, "requests_per_s": server_rps, **_percentiles(latencies)},
        "in_process_single_ms": in_process_s * 1000,
        "server_vs_in_process_rps": server_rps * in_process_s,
    }


def _time(fn) -> float:
    s = time.perf_counter()
    fn()
    return time.perf_counter() - s


if __name__ == "__main__":
    import json

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
