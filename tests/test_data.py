"""Data sources, checks, splits, manifests and pipelines, on generated images."""

import csv
import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tf_transfer.config import DataConfig
from tf_transfer.data import datasets as data
from tf_transfer.data import demo, images
from tf_transfer.data.sources import DataError, Example
from tf_transfer.folders import RunDir, cache_home

from .conftest import SIZE


def _cfg(source, **kw):
    return DataConfig(source=str(source), image_size=SIZE, batch_size=8, **kw)


def _pool(per_class: dict[str, int]):
    names = sorted(per_class)
    return {"all": [Example(f"{c}/{i:03d}.jpg", names.index(c)) for c in names for i in range(per_class[c])]}


def test_split_is_deterministic_disjoint_and_stratified():
    pool = _pool({"a": 40, "b": 20, "c": 100})
    s1 = data.split_examples(pool, 0.2, 0.1, seed=3)
    s2 = data.split_examples(pool, 0.2, 0.1, seed=3)
    s3 = data.split_examples(pool, 0.2, 0.1, seed=4)
    assert s1 == s2 and s1 != s3
    keys = [set(e.key for e in s1[s]) for s in ("train", "val", "test")]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert set.union(*keys) == {e.key for e in pool["all"]}
    for label, n in ((0, 40), (1, 20), (2, 100)):
        counts = {s: sum(e.label == label for e in s1[s]) for s in s1}
        assert counts["val"] == round(n * 0.2) and counts["test"] == round(n * 0.1)


def test_tiny_classes_keep_a_training_image():
    s = data.split_examples(_pool({"a": 2, "b": 3}), 0.4, 0.4, seed=0)
    assert all(sum(e.label == c for e in s["train"]) >= 1 for c in (0, 1))


def test_given_splits_are_kept_and_missing_ones_carved(shapes_dir, tmp_path):
    root = tmp_path / "split_layout"
    demo.write_shapes(root / "train", classes=("circle", "square"), per_class=10, size=32, seed=2)
    demo.write_shapes(root / "test", classes=("circle", "square"), per_class=3, size=32, seed=3)
    d = data.prepare(_cfg(root, val_fraction=0.2), seed=0)
    assert all("/test/" in e.key for e in d.splits["test"]) and len(d.splits["test"]) == 6
    assert len(d.splits["val"]) == 4 and all("/train/" in e.key for e in d.splits["val"])


def test_classes_sorted_manifest_persisted(tmp_path):
    root = tmp_path / "imgs"
    demo.write_shapes(root, classes=("triangle", "circle", "square"), per_class=6, size=32)
    (root / "Zebra").mkdir()
    demo.write_shapes(root, classes=("ring",), per_class=4, size=32)
    (root / "ring").rename(root / "Zebra" / "nested")
    d = data.prepare(_cfg(root), seed=1)
    assert d.class_names == ["Zebra", "circle", "square", "triangle"]
    assert sum(e.label == 0 for s in d.splits.values() for e in s) == 4  # nested files count
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    d.save(run)
    again = data.load_split(run)
    assert again.splits == d.splits and again.class_names == d.class_names


def _write_bad_files(folder):
    good = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(good, "JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    png = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(png, "PNG")
    (folder / "cut.png").write_bytes(png.getvalue()[:60])
    (folder / ".DS_Store").write_bytes(b"\0\1")  # hidden files are ignored, not reported
    return {"truncated.jpg", "notes.txt", "empty.png", "cut.png"}


def test_bad_files_are_skipped_and_reported(tmp_path):
    root = demo.write_shapes(tmp_path / "imgs", classes=("circle", "square"), per_class=8, size=32)
    bad = _write_bad_files(root / "circle")
    d = data.prepare(_cfg(root), seed=0)
    assert {p.rsplit("/", 1)[1] for p in d.skipped} == bad
    assert all(reason for reason in d.skipped.values())
    assert not any(e.key in d.skipped for s in d.splits.values() for e in s)
    d.save(RunDir(tmp_path))
    rows = list(csv.DictReader((tmp_path / RunDir.SKIPPED).open()))
    assert len(rows) == 4 and all(r["reason"] for r in rows)
    # The pipeline then reads every remaining file without error.
    n = sum(int(x.shape[0]) for x, _ in data.pipeline(d, "train", _cfg(root), SIZE, 0, training=True))
    assert n == len(d.splits["train"])


def test_strict_fails_listing_the_bad_files(tmp_path):
    root = demo.write_shapes(tmp_path / "imgs", classes=("circle", "square"), per_class=4, size=32)
    _write_bad_files(root / "square")
    with pytest.raises(DataError, match=r"4 file\(s\) cannot be used \(--strict\)") as e:
        data.prepare(_cfg(root, strict=True), seed=0)
    assert "truncated.jpg" in str(e.value) and "notes.txt" in str(e.value)


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("empty", "has no class subfolders"),
    ("one_class", "need at least 2 classes.*found only 'circle'"),
    ("tiny_class", r"at least 2 readable examples; too few in: square \(1\)"),
    ("unknown_tfds", "unknown TFDS dataset 'mnistt'. Did you mean mnist"),
    ("missing_csv", "CSV manifest .* does not exist"),
])
def test_clear_errors(tmp_path, case, match):
    root = tmp_path / "imgs"
    if case == "empty":
        root.mkdir()
    elif case == "one_class":
        demo.write_shapes(root, classes=("circle",), per_class=4, size=32)
    elif case == "tiny_class":
        demo.write_shapes(root, classes=("circle", "square"), per_class={"circle": 4, "square": 1}, size=32)
    source = {"unknown_tfds": "tfds:mnistt", "missing_csv": f"csv:{tmp_path}/x.csv"}.get(case, root)
    with pytest.raises(DataError, match=match):
        data.prepare(_cfg(source), seed=0)


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("GIF", "P"),
                                       ("BMP", "RGB"), ("JPEG", "L"), ("PNG", "LA")])
def test_formats_read_as_three_channels(tmp_path, fmt, mode):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            img = Image.fromarray(np.full((20 + i, 30, 3), 60 * i, np.uint8)).convert(mode)
            img.save(root / c / f"{i}.{fmt.lower()}", fmt)
    d = data.prepare(_cfg(root, val_fraction=0.0, test_fraction=0.0), seed=0)
    assert not d.skipped
    x, y = next(iter(data.pipeline(d, "train", _cfg(root, augment=False), SIZE, 0)))
    assert x.shape == (6, SIZE, SIZE, 3) and y.shape == (6, 2)
    assert float(x.numpy().max()) <= 255 and x.dtype.name == "float32"


def test_csv_manifest_with_split_column_and_relative_paths(tmp_path):
    root = demo.write_shapes(tmp_path / "imgs", classes=("circle", "square"), per_class=6, size=32)
    rows = ["path,label,split"]
    for c in ("circle", "square"):
        for i in range(6):
            rows.append(f"imgs/{c}/{c}_{i:04d}.jpg,{c},{'test' if i == 0 else ''}")
    rows.append("imgs/missing.jpg,circle,")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    d = data.prepare(_cfg(f"csv:{tmp_path}/m.csv", val_fraction=0.2), seed=0)
    assert d.class_names == ["circle", "square"]
    assert sorted(e.key.rsplit("/", 1)[1] for e in d.splits["test"]) == ["circle_0000.jpg", "square_0000.jpg"]
    assert len(d.splits["val"]) == 2 and list(d.skipped.values()) == ["file not found (line 14)"]
    assert root.exists()


def test_tfds_through_tfds_load_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=60):
        d = data.prepare(_cfg("tfds:mnist"), seed=0)
        assert d.kind == "tfds" and d.class_names == [str(i) for i in range(10)]
        labels = [int(i) for _, y in data.pipeline(d, "val", _cfg("tfds:mnist"), 32, 0) for i in y.numpy().argmax(-1)]
    assert labels == [e.label for e in d.splits["val"]]  # pipeline order matches the manifest


def test_class_weights_are_balanced(tmp_path):
    root = demo.write_shapes(tmp_path / "imgs", classes=("circle", "square"), per_class={"circle": 30, "square": 10},
                             size=32)
    d = data.prepare(_cfg(root, val_fraction=0.0, test_fraction=0.0), seed=0)
    w = d.class_weights()
    assert w[0] == pytest.approx(40 / (2 * 30)) and w[1] == pytest.approx(40 / (2 * 10))


def test_augmentation_only_on_training_split(shapes_dir):
    cfg = _cfg(shapes_dir, shuffle_buffer=1)
    d = data.prepare(cfg, seed=0)
    val1 = np.concatenate([x.numpy() for x, _ in data.pipeline(d, "val", cfg, SIZE, 0)])
    val2 = np.concatenate([x.numpy() for x, _ in data.pipeline(d, "val", cfg, SIZE, 0)])
    np.testing.assert_array_equal(val1, val2)
    train = data.pipeline(d, "train", cfg, SIZE, 0, training=True)
    plain = data.pipeline(d, "train", _cfg(shapes_dir, augment=False, shuffle_buffer=1), SIZE, 0, training=True)
    (a, ya), (b, yb) = next(iter(train)), next(iter(plain))
    np.testing.assert_array_equal(ya, yb)  # buffer 1: same order
    assert np.abs(a.numpy() - b.numpy()).mean() > 1.0


def test_counts_report(shapes_dir):
    d = data.prepare(_cfg(shapes_dir), seed=0)
    table = d.summary_table()
    assert "circle" in table and "total" in table
    assert Counter(e.label for e in d.splits["train"]) == Counter({0: 20, 1: 20, 2: 20})  # 30 - 2 * round(4.5)


def _jpeg(width: int, height: int) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("size,expected", [(64, (75, 125)), (80, (150, 250)), (300, (300, 500)), (301, (600, 1000))])
def test_large_jpegs_decode_at_the_smallest_dct_scale_that_keeps_the_input_size(size, expected):
    decoded = images.decode_jpeg_at_least(_jpeg(1000, 600), size)
    assert tuple(decoded.shape[:2]) == expected


def test_dct_scaled_decoding_matches_full_decoding_closely_and_png_is_unchanged():
    import tensorflow as tf

    blob = _jpeg(1000, 600)
    scaled = images.decode_and_resize(blob, 64).numpy().astype(int)
    full = images.resize(images.decode(blob), 64).numpy().astype(int)
    assert scaled.shape == full.shape == (64, 64, 3)
    assert np.abs(scaled - full).mean() < 4  # a smooth image: both are faithful downscales
    png = tf.io.encode_png(images.decode(blob)).numpy()
    assert np.array_equal(images.decode_and_resize(png, 64).numpy(), full)


def test_auto_cache_picks_memory_then_disk_then_nothing(tmp_path, monkeypatch, shapes_dir):
    import shutil
    from collections import namedtuple

    cfg = DataConfig(source=str(shapes_dir), image_size=SIZE)
    d = data.prepare(cfg, seed=0)
    needed = sum(len(v) for v in d.splits.values()) * SIZE * SIZE * 3
    assert data.cache_place("auto", d, SIZE) == "memory"
    assert data.cache_place("none", d, SIZE) == "none"
    monkeypatch.setattr(data, "_available_memory", lambda: needed)  # more than half of it is needed
    on_disk = data.cache_place("auto", d, SIZE)
    assert on_disk.startswith(str(cache_home())) and on_disk.endswith("images")
    ds = data.pipeline(d, "train", DataConfig(source=str(shapes_dir), image_size=SIZE, cache="auto"), SIZE, 0)
    assert sum(int(x.shape[0]) for x, _ in ds) == len(d.splits["train"])
    assert any((cache_home() / "images").iterdir()), "the auto cache wrote nothing to disk"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(needed, needed, needed // 2))
    assert data.cache_place("auto", d, SIZE) == "none"
