"""Hostile inputs, kills and concurrency: the export, the version folders, runs and the data check."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_transfer import folders
from tf_transfer.config import DataConfig
from tf_transfer.data import datasets, demo, images
from tf_transfer.errors import DataError, ExportError, Preempted, RunError
from tf_transfer.folders import ModelDir, RunDir
from tf_transfer.serving import savedmodel

from .conftest import make_config

# --- crafted image files ----------------------------------------------------------------------------

def webp_lossless_header(width: int, height: int) -> bytes:
    """A 38-byte lossless WebP whose header claims width x height (no real image data)."""
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 9
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_animated_header() -> bytes:
    payload = bytes([0x02, 0, 0, 0]) + (99).to_bytes(3, "little") + (99).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk + b"\x00" * 8


def _lzw_one_colour(pixels: int, min_code: int = 2) -> bytes:
    """The GIF LZW stream (sub-blocks included) of `pixels` pixels of colour 0, as giflib's encoder writes
    it; a run is coded in strings of growing length, so 64 megapixels take about 50 KB."""
    clear, eoi = 1 << min_code, (1 << min_code) + 1
    codes, bits = [], []
    state = {"next": eoi + 1, "bits": min_code + 1}

    def emit(code):
        codes.append(code)
        bits.append(state["bits"])
        if state["next"] >= 1 << state["bits"] and state["bits"] < 12:
            state["bits"] += 1

    emit(clear)
    longest, current, left = 1, 1, pixels - 1  # table strings: runs of length 2..longest
    while left:
        grow = min(longest - current, left)
        current, left = current + grow, left - grow
        if not left:
            break
        left -= 1  # the pixel that no string extends to: it starts the next one
        emit(0 if current == 1 else eoi + current - 1)
        current = 1
        if state["next"] >= 4095:
            emit(clear)
            state.update(next=eoi + 1, bits=min_code + 1)
            longest = 1
        else:
            state["next"] += 1
            longest += 1
    emit(0 if current == 1 else eoi + current - 1)
    emit(eoi)
    packed, shift = 0, 0
    for code, width in zip(codes, bits, strict=True):
        packed |= code << shift
        shift += width
    data = packed.to_bytes((shift + 7) // 8, "little")
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255] for i in range(0, len(data), 255))
    return bytes([min_code]) + blocks + b"\x00"


def gif_frame(screen: tuple[int, int], frame: tuple[int, int, int, int]) -> bytes:
    """A valid GIF whose logical screen claims `screen` (width, height) and whose one image holds `frame`
    (left, top, width, height) of one colour: small, but giflib allocates the frame's area and TensorFlow
    sizes its output from it."""
    left, top, width, height = frame
    header = b"GIF89a" + struct.pack("<HH", *screen) + bytes([0, 0, 0])  # no global colour table
    descriptor = b"\x2c" + struct.pack("<HHHH", left, top, width, height) + bytes([0x80])  # 2-colour local table
    return header + descriptor + b"\x00\x00\x00\xff\xff\xff" + _lzw_one_colour(width * height) + b"\x3b"


def webp_canvas(canvas: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """An extended (VP8X) WebP whose canvas claims `canvas` and whose lossless frame claims `frame`
    (width, height), after an ICCP chunk as cameras write them."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x20, 0, 0, 0]) + (canvas[0] - 1).to_bytes(3, "little") + (
        canvas[1] - 1).to_bytes(3, "little")
    iccp = b"ICCP" + struct.pack("<I", 5) + b"\x00" * 5 + b"\x00"  # an odd size: padded to even
    image = webp_lossless_header(*frame)[12:]
    body = vp8x + iccp + image
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def png_without_ihdr_first() -> bytes:
    """A PNG whose first chunk is not IHDR: the bytes where IHDR's size would be say 1 x 1."""
    text = b"tEXt" + b"\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + text + b"\x00" * 4


# Files whose headers understate what decoding them costs (64 megapixels or more each, about 44 KB at most)
FRAME_BOMBS = {
    "GIF screen smaller than its frame": gif_frame((1, 1), (0, 0, 8000, 8000)),
    "GIF frame offset outside the screen": gif_frame((100, 100), (65000, 0, 100, 4000)),
    "WebP canvas smaller than its frame": webp_canvas((1, 1), (16384, 16384)),
}


def gif(frames: int, size: int = 60) -> bytes:
    rng = np.random.default_rng(frames)
    pictures = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(frames)]
    buf = io.BytesIO()
    pictures[0].save(buf, "GIF", save_all=True, append_images=pictures[1:])
    return buf.getvalue()


def jpeg(size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(size).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _decode_error(blob: bytes, max_pixels: int) -> str:
    try:
        images.checked_decode(tf.constant(blob), 32, max_pixels)
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        return images.clean_error(e)
    return ""


def test_header_sizes_of_every_format():
    info = lambda b: images.header_info(tf.constant(b)).numpy().tolist()  # noqa: E731
    assert info(webp_lossless_header(16383, 16384)) == [5, 16384, 16383, 1]
    assert info(webp_animated_header())[3] == -1
    assert info(gif(3, 40)) == [3, 40, 40, 3]
    assert info(jpeg(48))[:3] == [1, 48, 48]
    assert info(b"not an image at all, just text")[0] == 0
    buf = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buf, "WEBP")
    assert info(buf.getvalue())[:3] == [5, 20, 30]


@pytest.mark.parametrize("name", FRAME_BOMBS)
def test_frames_larger_than_their_headers_claim_are_refused_before_decoding(name):
    decoder = tf.function(lambda b: images.checked_decode(b, 32, 50_000_000),  # in a graph, as exported
                          input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    decoder(tf.constant(gif(2, 20)))  # traced and run once before the clock starts: only the refusal is timed
    started = time.monotonic()
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than the limit of 50000000 pixels"):
        decoder(tf.constant(FRAME_BOMBS[name]))
    assert time.monotonic() - started < 0.5


def test_a_frame_that_fits_its_screen_is_still_decoded_and_headers_report_the_larger_size():
    info = lambda b: images.header_info(tf.constant(b)).numpy().tolist()  # noqa: E731
    assert info(FRAME_BOMBS["GIF screen smaller than its frame"]) == [3, 8000, 8000, 1]
    assert info(gif_frame((100, 100), (65000, 0, 100, 4000))) == [3, 4000, 65100, 1]
    assert info(gif_frame((50, 40), (10, 5, 20, 20))) == [3, 40, 50, 1]  # inside the screen: the screen
    assert info(webp_canvas((1, 1), (16384, 16384))) == [5, 16384, 16384, 1]
    assert info(webp_canvas((300, 200), (30, 20))) == [5, 200, 300, 1]
    assert "first chunk must be IHDR" in _decode_error(png_without_ihdr_first(), 50_000_000)
    assert _decode_error(gif(2, 20), 50_000_000) == ""


def test_every_format_is_bounded_before_decoding():
    assert "larger than the limit of 50000000 pixels" in _decode_error(webp_lossless_header(16384, 16384), 50_000_000)
    assert "larger than the limit of 10000 pixels" in _decode_error(gif(3), 10_000)  # 60 x 60 x 3 frames
    assert _decode_error(gif(2), 10_000) == ""  # 7,200 pixels: decoded
    assert "animated WebP" in _decode_error(webp_animated_header(), 50_000_000)
    assert "not an image in a supported format" in _decode_error(b"%PDF-1.4 not an image", 50_000_000)
    assert "empty image bytes" in _decode_error(b"", 50_000_000)


def test_the_export_refuses_the_same_files(trained_run):
    fn = tf.saved_model.load(str(trained_run.export_path)).signatures["serving_default"]
    for blob in (webp_lossless_header(16384, 16384), b"\x00" * 64, *FRAME_BOMBS.values()):
        with pytest.raises(tf.errors.InvalidArgumentError):
            fn(image_bytes=tf.constant([blob]))


def test_the_data_scan_skips_oversized_webp_and_gif(tmp_path):
    root = demo.write_shapes(tmp_path / "imgs", classes=("circle", "square"), per_class=4, size=32)
    (root / "circle" / "bomb.webp").write_bytes(webp_lossless_header(16384, 16384))
    (root / "circle" / "many.gif").write_bytes(gif(5))
    for i, blob in enumerate(FRAME_BOMBS.values()):
        (root / "square" / f"frame{i}.{'webp' if blob.startswith(b'RIFF') else 'gif'}").write_bytes(blob)
    data = datasets.prepare(DataConfig(source=str(root), max_image_pixels=10_000, val_fraction=0.0,
                                       test_fraction=0.0), seed=0)
    reasons = {Path(p).name: r for p, r in data.skipped.items()}
    assert "larger than the limit of 10000 pixels" in reasons["bomb.webp"]
    assert "larger than the limit of 10000 pixels" in reasons["many.gif"]
    assert sum("larger than the limit of 10000 pixels" in r for n, r in reasons.items() if n.startswith("frame")) == 3


# --- export: verify before publishing, no training data, version folders ----------------------------------

@pytest.mark.slow
def test_a_failed_verification_publishes_nothing(trained_run, tmp_path):
    def tampered(model, spec, version, name):
        savedmodel.write_version(model, spec, version, name)
        (version / ModelDir.LABELS).write_text("x\ny\nz\n")  # the export no longer names its classes right

    spec = savedmodel.ExportSpec(trained_run.class_names, 64, {}, {}, samples=savedmodel.synthetic_images(64),
                                 keras_traces=False, verify=True)
    with pytest.raises(ExportError, match="not published"):
        savedmodel.export_classifier(trained_run.model, spec, tmp_path, "m", write=tampered)
    assert ModelDir(tmp_path / "m").versions() == [] and list((tmp_path / "m").iterdir()) == []


def test_exports_carry_no_training_images_or_local_paths(trained_run, shapes_dir):
    version = trained_run.export_path
    samples = json.loads((version / ModelDir.SAMPLES).read_text())
    training_bytes = {p.read_bytes() for p in shapes_dir.rglob("*.jpg")}
    assert samples["images_b64"] and not any(base64.b64decode(s) in training_bytes for s in samples["images_b64"])
    config_text = (version / ModelDir.CONFIG).read_text()
    for local in (str(shapes_dir), str(trained_run.run_dir.parent), str(version.parent.parent)):
        assert local not in config_text
    assert json.loads(config_text)["data"]["source"] == shapes_dir.name


def test_warmup_from_data_is_opt_in(trained_run, tmp_path):
    from tf_transfer.workflows.images import Images

    data = datasets.load_split(RunDir(trained_run.run_dir))
    files = {Path(e.key).read_bytes() for e in data.splits["test"]}
    for opt_in in (False, True):
        config = trained_run.config.replace(**{"export.warmup_from_data": opt_in})
        spec = Images(config).export_spec(trained_run.model, data, {})
        assert all((s in files) == opt_in for s in spec.samples)


def test_version_folders_ignore_strays_and_never_loop(tmp_path, trained_run):
    model_dir = ModelDir(tmp_path / "m")
    shutil.copytree(trained_run.export_path, model_dir.path / "1")
    (model_dir.path / "2").write_text("a stray file named like the next version")
    (model_dir.path / "5").mkdir()  # an incomplete version: no saved_model.pb
    (model_dir.path / "\u0663").mkdir()  # an Arabic-Indic digit three: not a TF Serving version
    assert model_dir.versions() == [1] and model_dir.latest().name == "1"
    staged = model_dir.path / ".staged"
    shutil.copytree(trained_run.export_path, staged)
    assert model_dir.publish(staged).name == "6"
    assert model_dir.versions() == [1, 6]


def test_models_config_escapes_names_and_commands_are_quoted(tmp_path, trained_run):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    odd = 'a"b\nc'
    shutil.copytree(trained_run.export_path, tmp_path / odd / "1")
    docker, _ = savedmodel.write_models_config(tmp_path)
    parsed = text_format.Parse(docker.read_text(), model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in parsed.model_config_list.config] == [odd]
    commands = savedmodel.serving_commands(tmp_path / "x y$(touch z)" / "1")
    assert "--model_name=x y$(touch z)" in shlex.split(commands["tensorflow_model_server"])


# --- runs: idempotent resume, multi-worker folders, pre-emption at epoch end ---------------------------

def test_resuming_a_finished_run_trains_and_exports_nothing_again(trained_run, tmp_path):
    from tf_transfer.workflows import recipe

    # a copy of the shared run and of its export folder: resuming must change neither, but if it did,
    # only the copies would be harmed
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained_run.run_dir, run.path, ignore=shutil.ignore_patterns("tensorboard"))
    exports = tmp_path / "exports"
    shutil.copytree(trained_run.export_path.parent, exports / "shapes")
    state = run.state()
    run.update_state(done={k: v for k, v in state["done"].items() if k != "export"})  # killed after publishing
    lines = (run.path / RunDir.HISTORY_LOG).read_text()
    again = recipe.run(trained_run.config.replace(**{"export.export_dir": str(exports)}), run.path)
    assert (run.path / RunDir.HISTORY_LOG).read_text() == lines  # no epoch ran again, nor the baseline
    assert again.export_path == exports / "shapes" / "1"
    assert ModelDir(exports / "shapes").versions() == [1]
    assert again.metrics["test"] == trained_run.metrics["test"]


def test_a_cluster_folder_with_another_config_is_not_resumed(tmp_path, monkeypatch):
    from tf_transfer.training.distribute import Session, Topology
    from tf_transfer.workflows import recipe

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    session = Session(tf.distribute.get_strategy(), Topology("multiworker", 2, 2, 0, True), "float32", 8)
    config = make_config(tmp_path, "demo", name="mw")
    run = recipe._run_dir(config, None, session)
    run.save_config(config)
    run.write_split({}, [], {})
    assert recipe._run_dir(config, None, session).path == run.path  # same job: resumed
    with pytest.raises(RunError, match=r"different config \(differs in: phase1"):
        recipe._run_dir(config.replace(**{"phase1.epochs": 7}), None, session)


def test_sigterm_during_the_last_validation_is_not_swallowed(tmp_path):
    from tf_transfer._keras import keras
    from tf_transfer.training.callbacks import PreemptionSaver

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))

    class SignalDuringValidation(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            if self.params.get("epochs") and saver._previous is not None:
                os.kill(os.getpid(), 15)

    saver = PreemptionSaver(backup)
    x = np.zeros((8, 2), np.float32)
    with pytest.raises(Preempted, match="after epoch 1"):
        model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=1, verbose=0,
                  callbacks=[backup, saver, SignalDuringValidation()])
    assert any((tmp_path / "backup").rglob("*.index")), "the finished epoch was backed up"


# --- caches: stale locks, contents in the key, concurrent writers --------------------------------------

def test_a_stale_image_cache_lock_is_cleared_and_a_live_one_respected(tmp_path, shapes_dir):
    cache = tmp_path / "cache"
    cfg = DataConfig(source=str(shapes_dir), image_size=32, cache=str(cache), val_fraction=0.0, test_fraction=0.0)
    data = datasets.prepare(cfg, seed=0)
    name = f"train-{datasets.cache_key(data.splits['train'], 32)}"
    cache.mkdir()
    (cache / f"{name}_0.lockfile").write_text("Created at: 0")  # what a SIGKILL mid-epoch leaves
    (cache / f"{name}_0.data-00000-of-00001.tempstate123").write_bytes(b"partial")
    ds = datasets.pipeline(data, "train", cfg, 32, 0)
    assert sum(int(x.shape[0]) for x, _ in ds) == len(data.splits["train"])
    assert (cache / f"{name}.index").is_file()
    # Another live process is writing the cache of different data: this one caches privately.
    other = f"val-{'0' * 16}"
    with open(cache / f"{other}.owner", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        private = datasets.disk_cache_prefix(cache, other)
    assert Path(private).name.startswith(folders.PARTIAL) and Path(private).name.endswith(other)


def test_image_cache_key_follows_file_contents(tmp_path, shapes_dir):
    source = tmp_path / "shapes"
    shutil.copytree(shapes_dir, source)
    cfg = DataConfig(source=str(source), image_size=32, val_fraction=0.0, test_fraction=0.0)
    before = datasets.cache_key(datasets.prepare(cfg, 0).splits["train"], 32)
    first = sorted(source.rglob("*.jpg"))[0]
    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first)
    assert datasets.cache_key(datasets.prepare(cfg, 0).splits["train"], 32) != before


def test_concurrent_folder_writers_never_delete_each_others_work(tmp_path):
    final = tmp_path / "entry"
    with folders.atomic_dir(final) as a:
        (a / "f").write_text("a")
    with folders.atomic_dir(final) as b:  # a second writer of the same entry: the first one stays
        (b / "f").write_text("b")
    assert (final / "f").read_text() == "a"
    with folders.atomic_dir(final, replace=True) as c:  # a rebuild replaces it whole
        (c / "f").write_text("c")
    assert (final / "f").read_text() == "c" and sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f"{folders.PARTIAL}{folders._token().split('-')[0]}-{dead.stdout.strip()}-x-entry"
    leftover.mkdir()
    live = folders.partial_path(tmp_path / "entry")
    live.mkdir()
    assert folders.sweep_partials(tmp_path) == 1 and live.is_dir() and not leftover.exists()


# --- data: names, duplicates, paths outside the folder, classes without training images ----------------

def test_a_file_name_that_is_not_utf8_is_skipped_not_a_crash(tmp_path):
    root = demo.write_shapes(tmp_path / "imgs", classes=("circle", "square"), per_class=4, size=32)
    bad = os.path.join(os.fsencode(root / "circle"), b"caf\xe9.jpg")
    with open(bad, "wb") as f:
        f.write(jpeg())
    data = datasets.prepare(DataConfig(source=str(root), val_fraction=0.0, test_fraction=0.0), seed=0)
    (reason,) = [r for p, r in data.skipped.items() if "caf" in p]
    assert "not valid UTF-8" in reason


def test_duplicates_are_reported_and_dedupe_removes_them(tmp_path):
    root = tmp_path / "imgs"
    demo.write_shapes(root / "train", classes=("circle", "square"), per_class=6, size=32, seed=1)
    demo.write_shapes(root / "test", classes=("circle", "square"), per_class=2, size=32, seed=2)
    shutil.copy(root / "train" / "circle" / "circle_0000.jpg", root / "test" / "circle" / "leak.jpg")
    shutil.copy(root / "train" / "circle" / "circle_0001.jpg", root / "train" / "square" / "conflict.jpg")
    cfg = DataConfig(source=str(root), val_fraction=0.0)
    found = datasets.prepare(cfg, seed=0).checks["duplicates"]
    assert (found["groups"], found["across_splits"], found["conflicting_labels"]) == (2, 1, 1)
    deduped = datasets.prepare(DataConfig(source=str(root), val_fraction=0.0, dedupe=True), seed=0)
    keys = {str(Path(e.key).relative_to(root)) for s in deduped.splits.values() for e in s}
    assert "test/circle/leak.jpg" in keys and "train/circle/circle_0000.jpg" not in keys  # held-out copy kept
    assert not {"train/square/conflict.jpg", "train/circle/circle_0001.jpg"} & keys  # conflicting: all dropped


def test_files_outside_the_data_folder_warn_and_strict_refuses(tmp_path, caplog):
    root = demo.write_shapes(tmp_path / "imgs", classes=("circle", "square"), per_class=4, size=32)
    (tmp_path / "elsewhere.jpg").write_bytes(jpeg())
    (root / "circle" / "link.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    datasets.prepare(DataConfig(source=str(root), val_fraction=0.0, test_fraction=0.0), seed=0)
    assert "1 file(s) lie outside" in caplog.text
    with pytest.raises(DataError, match="--strict refuses files outside"):
        datasets.prepare(DataConfig(source=str(root), strict=True), seed=0)
    manifest = tmp_path / "list" / "m.csv"
    manifest.parent.mkdir()
    rows = [f"../imgs/circle/circle_000{i}.jpg,circle" for i in range(4)] + \
        [f"../imgs/square/square_000{i}.jpg,square" for i in range(4)]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="8 file\\(s\\) lie outside"):
        datasets.prepare(DataConfig(source=f"csv:{manifest}", strict=True), seed=0)


def test_a_class_without_training_images_is_an_error(tmp_path):
    root = tmp_path / "imgs"
    demo.write_shapes(root / "train", classes=("circle", "square"), per_class=4, size=32)
    demo.write_shapes(root / "test", classes=("circle", "square", "triangle"), per_class=3, size=32)
    with pytest.raises(DataError, match=r"triangle"):
        datasets.prepare(DataConfig(source=str(root)), seed=0)
    manifest = tmp_path / "m.csv"
    lines = [f"{p},{p.parent.name},{p.parent.parent.name}" for p in sorted(root.rglob("*.jpg"))]
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="classes triangle have no training examples"):
        datasets.prepare(DataConfig(source=f"csv:{manifest}"), seed=0)
