"""Phase 1's feature cache: same head as live training, reuse, invalidation, corruption."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_config
from tf_transfer.folders import ModelDir

SMALL = 32  # the smallest MobileNetV2 input: these tests only need some features


def _setup(tmp_path: Path, source: Path, **overrides):
    """A config, its prepared data and a classifier for it (nothing trained)."""
    from tf_transfer.data import datasets as data
    from tf_transfer.models import backbones
    from tf_transfer.models import classifier as model_lib

    config = make_config(tmp_path, str(source), **{"data.image_size": SMALL, **overrides})
    images = data.prepare(config.data, config.seed)
    size = config.data.image_size
    bb = backbones.build(config.model.backbone, config.model.weights, size, "", config.model.preprocess)
    return config, images, model_lib.build_classifier(bb, images.num_classes, config.model)


def _ensure(config, images, model, root: Path, split="train", views=1):
    from tf_transfer.training import features

    return features.ensure(model, config, images, split, config.data.image_size, root, views, 16)


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_head_on_cached_features_matches_live_training_and_export(shapes_dir, tmp_path):
    import tensorflow as tf

    from tf_transfer.data import datasets
    from tf_transfer.data import images as image_lib
    from tf_transfer.folders import RunDir
    from tf_transfer.workflows import images, recipe

    results = {}
    for mode in ("off", str(tmp_path / "features")):
        config = make_config(tmp_path / ("live" if mode == "off" else "cached"), str(shapes_dir), **{
            "data.image_size": SMALL, "phase1.feature_cache": mode, "data.augment": False, "model.dropout": 0.0,
            "phase1.epochs": 3, "phase2.epochs": 0, "evaluation.report": False, "export.enabled": mode != "off"})
        results[mode] = recipe.run(config)
    live, cached = results.values()
    assert list((tmp_path / "features").iterdir()), "the cached run wrote no feature cache"
    heads = [r.model.get_layer("head").get_weights() for r in (live, cached)]
    for a, b in zip(*heads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert [round(h["loss"], 4) for h in live.history] == [round(h["loss"], 4) for h in cached.history]

    # the cached run's export answers as the live run's model does
    samples = images.sample_bytes(datasets.load_split(RunDir(cached.run_dir)), "test")
    signature = tf.saved_model.load(str(cached.export_path)).signatures["serving_default"]
    served = signature(image_bytes=tf.constant(samples))
    pixels = tf.cast(tf.stack([image_lib.decode_and_resize(tf.constant(b), SMALL) for b in samples]), tf.float32)
    np.testing.assert_allclose(served["scores"].numpy(), live.model(pixels, training=False).numpy(), atol=1e-4)
    assert (cached.export_path / ModelDir.LABELS).read_text().splitlines() == live.class_names


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_second_run_reuses_and_any_input_change_rebuilds(shapes_dir, tmp_path):
    from PIL import Image

    root = tmp_path / "features"
    source = tmp_path / "shapes"
    shutil.copytree(shapes_dir, source)
    config, images, model = _setup(tmp_path, source)
    first = _ensure(config, images, model, root)
    assert first.built and first.count == len(images.splits["train"])
    assert not _ensure(config, images, model, root).built, "identical inputs must reuse the cache"

    changed_weights = model.get_layer("backbone").get_weights()
    changed_weights[0] = changed_weights[0] * 1.01
    model.get_layer("backbone").set_weights(changed_weights)
    assert _ensure(config, images, model, root).built, "changed backbone weights must rebuild"

    for overrides in ({"data.image_size": 48}, {"model.preprocess": "unit"}, {"model.weights": "none"}):
        c, i, m = _setup(tmp_path, source, **overrides)
        assert _ensure(c, i, m, root).built, f"{overrides} must rebuild the cache"

    config, images, model = _setup(tmp_path, source)
    assert not _ensure(config, images, model, root).built
    path = images.splits["train"][0].key
    Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)  # same name, new content
    assert _ensure(config, images, model, root).built, "a changed image file must rebuild"


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "no_manifest"])
def test_corrupted_or_partial_cache_is_rebuilt_not_used(shapes_dir, tmp_path, damage, caplog):
    from tf_transfer.training import features

    root = tmp_path / "features"
    config, images, model = _setup(tmp_path, shapes_dir)
    good = _ensure(config, images, model, root)
    records = good.path / features.RECORDS
    original = records.read_bytes()
    if damage == "flip_byte":
        blob = bytearray(original)
        blob[len(blob) // 2] ^= 0xFF
        records.write_bytes(bytes(blob))
    elif damage == "truncate":
        records.write_bytes(original[: len(original) // 2])
    else:
        (good.path / features.MANIFEST).unlink()
    with caplog.at_level(logging.WARNING, logger="tf_transfer.training.features"):
        again = _ensure(config, images, model, root)
    assert again.built and again.path == good.path
    assert "rebuilding" in caplog.text and str(good.path) in caplog.text
    assert records.read_bytes() == original  # rebuilt to the same features
    ds = features.dataset(again, images.num_classes, config.seed, batch_size=16)
    assert sum(int(y.shape[0]) for _, y in ds) == again.count


def test_augmented_views_are_cached_and_each_epoch_draws_one_per_image(shapes_dir, tmp_path):
    from tf_transfer.training import features

    config, images, model = _setup(tmp_path, shapes_dir)
    fs = _ensure(config, images, model, tmp_path / "features", views=3)
    assert (fs.views, fs.count) == (3, len(images.splits["train"]))
    plain = features.dataset(fs, images.num_classes, config.seed, batch_size=fs.count)
    epochs = [next(iter(plain))[0].numpy() for _ in range(4)]
    assert all(e.shape == (fs.count, fs.dim) for e in epochs)
    # the same image shows different augmented views in different epochs
    assert any(not np.allclose(epochs[0], e) for e in epochs[1:])
    shuffled = features.dataset(fs, images.num_classes, config.seed, shuffle_buffer=64, batch_size=8)
    assert sum(int(y.shape[0]) for _, y in shuffled) == fs.count


def test_plan_turns_the_cache_on_only_where_it_saves_work(tmp_path):
    from tf_transfer.training import features

    def plan(workers=1, kind="default", **overrides):
        return features.plan(make_config(tmp_path, "demo", **overrides), workers, kind)

    assert plan(**{"phase1.epochs": 10}) is not None
    assert plan(**{"phase1.epochs": 1}) is None
    assert plan(**{"phase1.epochs": 3, "phase1.feature_views": 3}) is None  # as many passes as it saves
    assert plan(**{"phase1.epochs": 3, "data.augment": False}) is not None  # one view without augmentation
    assert plan(**{"phase1.epochs": 10, "phase1.feature_cache": "off"}) is None
    assert plan(workers=2, kind="multiworker", **{"phase1.epochs": 10}) is None
    assert plan(**{"phase1.epochs": 2, "phase1.feature_cache": str(tmp_path / "c")}) == tmp_path / "c"
    assert plan(**{"phase1.epochs": 2, "phase1.feature_cache": "on"}).name == "features"


def test_feature_views_must_be_positive(tmp_path):
    from tf_transfer import config as config_lib

    with pytest.raises(config_lib.ConfigError, match=r"phase1\.feature_views"):
        make_config(tmp_path, "demo", **{"phase1.feature_views": 0})



@pytest.mark.slow
def test_phase1_on_cached_features_is_preempted_and_resumes_where_it_stopped(shapes_dir, tmp_path):
    import signal
    import subprocess
    import sys

    from tests.conftest import history_lines, interrupt_when, only_run_dir
    from tf_transfer.folders import RunDir

    args = [sys.executable, "-m", "tf_transfer.train", "--data", str(shapes_dir), "--name", "p1",
            "--runs-dir", str(tmp_path / "runs"), "--image-size", "32", "--batch-size", "8", "--no-augment",
            "--phase1-epochs", "40", "--phase2-epochs", "1", "--phase1-patience", "0", "--phase2-patience", "0",
            "--feature-cache", str(tmp_path / "features"), "--no-export", "--no-report"]
    runs = tmp_path / "runs" / "p1"
    code, out = interrupt_when(args, lambda: len(history_lines(only_run_dir(runs))) >= 3, tmp_path / "p1.log",
                               sig=signal.SIGTERM)
    assert code == 143, out[-3000:]
    assert "Phase 1 trains the head on cached features" in out
    run_dir = only_run_dir(runs)
    last = history_lines(run_dir)[-1]["epoch"]
    resumed = subprocess.run([sys.executable, "-m", "tf_transfer.train", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Feature cache: reusing" in resumed.stdout  # the features were not computed again
    epochs = RunDir(run_dir).history()["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, 42))
    assert [e["phase"] for e in epochs] == [1] * 40 + [2]
    assert history_lines(run_dir)[last]["epoch"] == last + 1  # phase 1 went on after the last saved epoch
