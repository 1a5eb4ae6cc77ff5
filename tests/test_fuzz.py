"""Fuzzing, bounded in count and time: random bytes and mutated valid images and requests against the
exported signature's decoder, the data scanner, and the REST and gRPC front ends.

Every target must answer each input without crashing or hanging, within a memory bound: a decoded
image or an error for the decoder; a 200 or a 4xx with a message from the servers (never a 5xx).
"""

from __future__ import annotations

import io
import json
import resource
import time

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tf_transfer.data import images

from .test_hardening import FRAME_BOMBS, gif, gif_frame, webp_animated_header, webp_canvas, webp_lossless_header
from .test_server_hardening import (  # noqa: F401 - fixtures
    model_root,
    predict_request,
    raw_request,
    server,
    server_process,
    text_root,
)

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_PIXELS = 2_000_000


def _encoded(fmt: str, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(size).integers(0, 255, (size, size + 3, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


SEEDS = [_encoded("JPEG"), _encoded("PNG"), _encoded("BMP"), _encoded("WEBP"), gif(2, 20),
         webp_lossless_header(3000, 3000), webp_animated_header(),
         # headers that understate their frames, and near misses that decode
         *FRAME_BOMBS.values(), gif_frame((20, 20), (2, 2, 10, 10)), webp_canvas((30, 30), (30, 30))]


@st.composite
def mutated_images(draw):
    """A valid image with bytes flipped, a header field overwritten, truncated or extended; or noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))
    blob = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(blob) - 1))
        blob[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # a header field (sizes live in the first 32 bytes of every format)
        i = draw(st.integers(0, min(31, len(blob) - 4)))
        blob[i:i + 4] = draw(st.binary(min_size=4, max_size=4))
    cut = draw(st.integers(1, len(blob)))
    return bytes(blob[:cut]) + draw(st.binary(max_size=64))


@pytest.fixture(scope="module")
def decoder():
    return tf.function(lambda b: images.checked_decode(b, 32, MAX_PIXELS),
                       input_signature=[tf.TensorSpec([], tf.string)])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@FUZZ
@given(blob=mutated_images())
def test_fuzz_the_export_decoder(decoder, blob):
    started = time.monotonic()
    try:
        out = decoder(tf.constant(blob))
        assert out.shape == (32, 32, 3) and out.dtype == tf.uint8
    except tf.errors.InvalidArgumentError as e:
        assert images.clean_error(e) and "\\x" not in images.clean_error(e)  # a message, not the input echoed
    assert time.monotonic() - started < 5


def test_fuzzed_decoding_stays_within_memory(decoder):
    before = _rss_mb()
    rng = np.random.default_rng(0)
    for i in range(200):
        blob = bytearray(SEEDS[i % len(SEEDS)])
        for j in rng.integers(0, len(blob), 4):
            blob[j] = int(rng.integers(0, 256))
        try:
            decoder(tf.constant(bytes(blob)))
        except tf.errors.InvalidArgumentError:
            pass
    assert _rss_mb() - before < 300


def test_fuzz_the_data_scanner(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(120):
        blob = bytearray(SEEDS[i % len(SEEDS)])
        for j in rng.integers(0, len(blob), int(rng.integers(0, 8))):
            blob[j] = int(rng.integers(0, 256))
        path = tmp_path / f"f{i}.img"
        path.write_bytes(bytes(blob[: int(rng.integers(1, len(blob) + 1))]))
        paths.append(str(path))
    before, started = _rss_mb(), time.monotonic()
    bad = images.find_unreadable(paths, MAX_PIXELS)
    assert time.monotonic() - started < 120 and _rss_mb() - before < 500
    assert all(reason for reason in bad.values())
    assert str(tmp_path / "f5.img") in bad  # the 3000 x 3000 WebP header (9 Mpx) is over the budget


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(
                               st.sampled_from(["instances", "inputs", "b64", "signature_name", "examples",
                                                "image_bytes", "pixels", "x"]), children, max_size=4),
                           max_leaves=12)


@FUZZ
@given(body=JSON_VALUES, path=st.sampled_from(["/v1/models/shapes:predict", "/v1/models/shapes:classify",
                                                "/v1/models/shapes/versions/1:predict", "/v1/models/x:predict"]))
def test_fuzz_rest_requests(server, body, path):  # noqa: F811 - the fixture
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
    status, payload = raw_request(server.port, head + data)
    assert status == 200 or (400 <= status < 500 and json.loads(payload)["error"]), (status, payload[:200])


@FUZZ
@given(head=st.binary(max_size=300))
def test_fuzz_rest_framing(server, head):  # noqa: F811
    status, payload = raw_request(server.port, b"POST /v1/models/shapes:predict HTTP/1.1\r\n" + head + b"\r\n\r\n{}",
                                  read_timeout=15)
    assert status == 0 or 400 <= status < 500, (status, payload[:200])


DTYPES = [tf.float32, tf.uint8, tf.string, tf.int64, tf.float64, tf.bool]


@FUZZ
@given(dtype=st.sampled_from(DTYPES), dims=st.lists(st.integers(-2, 10**7), max_size=5),
       values=st.lists(st.integers(0, 255), max_size=8), name=st.sampled_from(["pixels", "image_bytes", "x"]),
       signature=st.sampled_from(["serving_default", "serving_pixels", "serving_pixels_uint8", "classify", ""]))
def test_fuzz_grpc_tensors(server, dtype, dims, values, name, signature):  # noqa: F811
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = predict_request("shapes", signature, name, dtype, dims, values)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    try:
        stub.Predict(request, timeout=30)
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (e.code(), e.details())


LEAVES = st.sampled_from(['"a"', "7", "-1.5", "true", "null", '{"b64": "AAAA"}', '"\\ud800"', "{}", '"\\u00e9"'])


@pytest.mark.slow
@FUZZ
@given(depth=st.integers(0, 64), leaves=st.lists(LEAVES, min_size=1, max_size=3),
       model=st.sampled_from(["shapes", "reviews"]), key=st.sampled_from(["instances", "inputs"]),
       signature=st.sampled_from(["", "serving_pixels", "serving_pixels_uint8"]))
def test_fuzz_rest_ranks_and_dtypes(server_process, depth, leaves, model, key, signature):  # noqa: F811
    """Nested lists of any rank 0-64 with mixed values: a 200 or a 400 with a message, and the server lives."""
    inner = "[" * depth + ", ".join(leaves) + "]" * depth if depth else leaves[0]
    body = f'{{"{key}": {inner}, "signature_name": "{signature if model == "shapes" else ""}"}}'.encode()
    status, payload = raw_request(server_process.port, b"POST /v1/models/" + model.encode() + b":predict HTTP/1.1\r\n"
                                  + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    assert server_process.alive(), server_process.log.read_text()[-2000:]
    assert status == 200 or (status == 400 and json.loads(payload)["error"]), (status, payload[:200])


@pytest.mark.slow
@FUZZ
@given(dtype=st.sampled_from(DTYPES), rank=st.integers(0, 64), values=st.lists(st.integers(0, 255), max_size=2),
       target=st.sampled_from([("shapes", "", "image_bytes"), ("shapes", "serving_pixels", "pixels"),
                               ("reviews", "", "text")]))
def test_fuzz_grpc_ranks_and_dtypes(server_process, dtype, rank, values, target):  # noqa: F811
    """Tensors of rank 0-64 and any dtype: INVALID_ARGUMENT with a message or an answer, and the server lives."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    model, signature, name = target
    request = predict_request(model, signature, name, dtype, [1] * rank, values[:1])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server_process.grpc_port}"))
    try:
        stub.Predict(request, timeout=30)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details(), (e.code(), e.details())
    assert server_process.alive(), server_process.log.read_text()[-2000:]
