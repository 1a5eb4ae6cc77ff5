"""Serving: signatures, bad requests, warm-up, TF Serving configs, clients, the local server, TFLite."""

import base64
import io
import json
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tf_transfer import serving
from tf_transfer.data import datasets, images
from tf_transfer.folders import ModelDir, RunDir
from tf_transfer.serving import savedmodel, signatures, tflite
from tf_transfer.serving import server as serve

from .test_end_to_end import _saved_model_cli


@pytest.fixture(scope="module")
def test_files(trained_run):
    return [e.key for e in datasets.load_split(RunDir(trained_run.run_dir)).splits["test"]]


@pytest.fixture(scope="module")
def local(trained_run):
    return serving.LocalModel(trained_run.export_path.parent)


@pytest.fixture(scope="module")
def server(trained_run):
    srv = serve.LocalServer([trained_run.export_path.parent], port=0, grpc_port=0, max_batch=16,
                            max_body_mb=1).start()
    yield srv
    srv.stop()


def _post(srv, path, body: bytes | dict, timeout=30):
    data_ = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}", data=data_)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _png(width: int, height: int) -> bytes:
    """A PNG header (signature + IHDR) claiming the given size, with no image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_saved_model_cli_shows_every_signature(trained_run):
    out = subprocess.run([*_saved_model_cli(), "show", "--dir", str(trained_run.export_path), "--all"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("serving_default", "serving_pixels", "serving_pixels_uint8", "classify"):
        assert f"signature_def['{name}']" in out
    for io_name in ("inputs['image_bytes']", "inputs['pixels']", "inputs['inputs']", "outputs['top_k_classes']",
                    "outputs['top_k_scores']", "DT_UINT8", "Method name is: tensorflow/serving/classify"):
        assert io_name in out


def test_top_k_and_pixel_signatures_agree_with_bytes(trained_run, test_files):
    loaded = tf.saved_model.load(str(trained_run.export_path))
    raw = [Path(f).read_bytes() for f in test_files[:6]]
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(raw))
    pixels = tf.stack([images.decode(tf.constant(b)) for b in raw])  # original size: resized in the graph
    by_uint8 = loaded.signatures["serving_pixels_uint8"](pixels=pixels)
    by_float = loaded.signatures["serving_pixels"](pixels=tf.cast(pixels, tf.float32))
    for out in (by_uint8, by_float):
        np.testing.assert_allclose(out["scores"].numpy(), by_bytes["scores"].numpy(), atol=1e-6)
    scores = by_bytes["scores"].numpy()
    top = by_bytes["top_k_classes"].numpy()
    assert top.shape == (6, 3)  # k = min(5, classes)
    names = trained_run.class_names
    assert [t[0].decode() for t in top] == [names[i] for i in scores.argmax(-1)]
    assert (np.diff(by_bytes["top_k_scores"].numpy(), axis=-1) <= 0).all()


def test_png_and_jpeg_of_the_same_picture_agree(local, test_files):
    jpegs = [Path(f).read_bytes() for f in test_files]
    pngs = []
    for b in jpegs:
        buf = io.BytesIO()
        Image.open(io.BytesIO(b)).convert("RGB").save(buf, "PNG")
        pngs.append(buf.getvalue())
    a, b = local.predict(jpegs), local.predict(pngs)
    assert [p.top_classes[0] for p in a] == [p.top_classes[0] for p in b]
    assert max(abs(p.top_scores[0] - q.top_scores[0]) for p, q in zip(a, b, strict=True)) < 0.05


@pytest.mark.parametrize("payload, message", [
    (b"", "empty image bytes"),
    (b"not an image at all", "not an image in a supported format"),
    (_png(100_000, 100_000), "larger than the limit"),
    (_png(0, 10), "zero width or height"),
])
def test_bad_images_get_an_error_for_that_request(local, payload, message):
    with pytest.raises(serving.BadRequest, match=message):
        local.predict([payload])


def test_truncated_image_and_mixed_batch(local, test_files):
    good = Path(test_files[0]).read_bytes()
    with pytest.raises(serving.BadRequest):
        local.predict([good[: len(good) // 2]])
    with pytest.raises(serving.BadRequest):  # documented: one bad image fails the whole batch
        local.predict([good, b"junk", good])
    assert local.predict([good])[0].top_classes  # and the model keeps serving


def _mutations(valid: bytes):
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
            lambda flips: bytes(_flip(valid, flips))),
        st.tuples(st.integers(0, 70_000), st.integers(0, 70_000)).map(lambda wh: _png(*wh)),
    )


def _flip(valid: bytes, flips):
    out = bytearray(valid)
    for i, v in flips:
        out[i] = v
    return out


def test_fuzzed_bytes_through_the_signature_and_the_server(local, server, test_files):
    valid = Path(test_files[0]).read_bytes()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_mutations(valid))
    def check(payload):
        try:
            preds = local.predict([payload])
            assert len(preds) == 1 and abs(sum(preds[0].scores.values()) - 1) < 1e-3
        except serving.BadRequest:
            pass
        status, body = _post(server, "/v1/models/shapes:predict",
                             {"instances": [{"b64": base64.b64encode(payload).decode()}]})
        assert status in (200, 400), body
        assert ("predictions" in body) if status == 200 else ("error" in body)

    check()
    assert _post(server, "/v1/models/shapes:predict",
                 {"instances": [{"b64": base64.b64encode(valid).decode()}]})[0] == 200


def test_rest_and_grpc_clients_match_the_saved_model(server, local, test_files):
    raw = [Path(f).read_bytes() for f in test_files[:8]]
    expected = local.predict(raw)
    rest = serving.RestClient(f"http://127.0.0.1:{server.port}", "shapes")
    grpc_client = serving.GrpcClient(f"127.0.0.1:{server.grpc_port}", "shapes")
    for client in (rest, grpc_client):
        got = client.predict(raw)
        assert [p.top_classes for p in got] == [p.top_classes for p in expected]
        assert max(abs(p.scores[c] - q.scores[c]) for p, q in zip(got, expected, strict=True)
                   for c in p.scores) < 1e-5
        classified = client.classify(raw[:2])
        assert [max(r, key=lambda cs: cs[1])[0] for r in classified] == [p.top_classes[0] for p in expected[:2]]
        sigs = client.metadata()["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "classify", "serving_pixels"} <= set(sigs)
    assert rest.status()["model_version_status"][0]["state"] == "AVAILABLE"
    with pytest.raises(serving.ModelNotFound, match="Servable not found"):
        serving.RestClient(f"http://127.0.0.1:{server.port}", "nope").predict(raw[:1])
    with pytest.raises(serving.ModelNotFound):
        serving.GrpcClient(f"127.0.0.1:{server.grpc_port}", "shapes", version=99).predict(raw[:1])
    grpc_client.close()


def test_dead_server_gives_the_documented_error_within_the_timeout():
    for client in (serving.RestClient("http://127.0.0.1:9", "m", timeout=2, retries=1),
                   serving.GrpcClient("127.0.0.1:9", "m", timeout=2, retries=1)):
        start = time.monotonic()
        with pytest.raises(serving.ServerUnavailable, match="is the model server running"):
            client.predict([b"x"])
        assert time.monotonic() - start < 10


def test_server_answers_bad_requests_with_json_errors(server, test_files):
    good = base64.b64encode(Path(test_files[0]).read_bytes()).decode()
    cases = [
        ("/v1/models/shapes:predict", b"{not json", 400, "JSON"),
        ("/v1/models/shapes:predict", {"instances": [{"b64": good}] * 17}, 400, "limit of 16"),
        ("/v1/models/shapes:predict", {"signature_name": "nope", "instances": [{"b64": good}]}, 400, "nope"),
        ("/v1/models/shapes:predict", {"instances": [{"b64": good}, {"b64": "AAAA"}]}, 400, "image"),
        ("/v1/models/shapes:predict", {"instances": [{"b64": "%%%"}]}, 400, "base64"),
        ("/v1/models/shapes:predict", {"instances": [{"b64": "A" * (2 << 20)}]}, 413, "exceeds the limit"),
        ("/v1/models/other:predict", {"instances": [{"b64": good}]}, 404, "Servable not found"),
        ("/v1/models/shapes:explode", {}, 404, "Malformed"),
    ]
    for path, body, status, message in cases:
        got_status, got = _post(server, path, body)
        assert got_status == status and message in got["error"], (path, got_status, got)
    status, body = _post(server, "/v1/models/shapes/versions/1:predict",
                         {"inputs": {"image_bytes": [{"b64": good}]}})  # columnar format
    assert status == 200 and len(body["outputs"]["scores"]) == 1


def test_server_serves_concurrent_clients(server, local, test_files):
    raw = [Path(f).read_bytes() for f in test_files[:4]]
    expected = [p.top_classes[0] for p in local.predict(raw)]
    errors, answers = [], []

    def worker():
        client = serving.RestClient(f"http://127.0.0.1:{server.port}", "shapes", timeout=60)
        for _ in range(4):
            try:
                answers.append([p.top_classes[0] for p in client.predict(raw)])
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(answers) == 32 and all(a == expected for a in answers)


def test_warmup_records_parse_and_run(trained_run):
    from tensorflow_serving.apis import prediction_log_pb2

    loaded = tf.saved_model.load(str(trained_run.export_path))
    records = list(tf.data.TFRecordDataset(str(trained_run.export_path / ModelDir.WARMUP)).as_numpy_iterator())
    assert len(records) == 2
    for record in records:
        entry = prediction_log_pb2.PredictionLog.FromString(record)
        request = entry.predict_log.request
        assert request.model_spec.signature_name == "serving_default" and request.model_spec.name == "shapes"
        batch = tf.make_ndarray(request.inputs[signatures.BYTES_INPUT])
        out = loaded.signatures[request.model_spec.signature_name](image_bytes=tf.constant(list(batch)))
        assert out["scores"].shape[0] == len(batch)


def test_models_config_and_serving_commands(trained_run, tmp_path):
    docker, local_config = savedmodel.write_models_config(trained_run.export_path.parent.parent)
    assert 'name: "shapes"' in docker.read_text() and 'base_path: "/models/shapes"' in docker.read_text()
    assert str(trained_run.export_path.parent.resolve()) in local_config.read_text()
    commands = savedmodel.serving_commands(trained_run.export_path)
    assert "tensorflow/serving" in commands["docker"] and "MODEL_NAME=shapes" in commands["docker"]
    assert "--model_base_path=" in commands["tensorflow_model_server"]


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_tflite_top1_matches_the_saved_model(trained_run, local, test_files, tmp_path):
    raw = [Path(f).read_bytes() for f in test_files]
    expected = [p.top_classes[0] for p in local.predict(raw)]
    pixels = np.stack([images.decode_and_resize(tf.constant(b), 64).numpy() for b in raw])
    scores = tflite.predict(tflite.convert(trained_run.model, 64, "float", tmp_path), pixels)
    assert [trained_run.class_names[i] for i in scores.argmax(-1)] == expected


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_predict_cli_skips_unreadable_images(trained_run, test_files, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in test_files[:5]:
        (folder / Path(f).name).write_bytes(Path(f).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out_csv = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.predict", str(trained_run.export_path.parent),
                           str(folder), "--output", str(out_csv), "--top-k", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "broken.jpg: skipped" in proc.stderr and "1 of 6 images could not be read" in proc.stderr
    rows = out_csv.read_text().splitlines()[1:]
    assert len(rows) == 5 and all(r.split(",")[2] in trained_run.class_names for r in rows)
