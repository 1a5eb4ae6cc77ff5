"""Publishing a run's backbone as a reusable SavedModel (TF-Hub format) and transferring from it."""

from __future__ import annotations

import json
import shutil
import uuid

import numpy as np
import pytest

from tests.conftest import SIZE, make_config
from tf_transfer import fs
from tf_transfer.errors import BackboneError, RunError
from tf_transfer.folders import PublishedDir


@pytest.fixture(scope="module")
def published(trained_run, tmp_path_factory):
    from tf_transfer import publish

    out = tmp_path_factory.mktemp("published") / "shapes-backbone"
    assert publish.main([str(trained_run.run_dir), "--out", str(out), "--license", "CC-BY-4.0"]) == 0
    return out


def _images(n: int = 4, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _run_features(model, pixels: np.ndarray) -> np.ndarray:
    from tf_transfer._keras import keras

    pooled = keras.Model(model.input, model.get_layer("pooler").output)
    return np.asarray(pooled(pixels, training=False))


def test_the_published_folder_is_complete_and_says_what_it_is(published, trained_run):
    names = {p.name for p in published.iterdir()}
    assert {"saved_model.pb", "variables", PublishedDir.CARD, PublishedDir.README, PublishedDir.MANIFEST} <= names
    assert not [n for n in names if n.startswith(".partial")]
    assert not [p for p in published.parent.iterdir() if p.name.startswith(".partial")]
    card = json.loads((published / PublishedDir.CARD).read_text())
    assert card["input"] == {"name": "images", "shape": [None, SIZE, SIZE, 3], "dtype": "float32", "range": [0.0, 1.0]}
    width = trained_run.model.get_layer("pooler").output_shape[-1]
    assert card["output"]["shape"] == [None, width] and card["license"] == "CC-BY-4.0"
    assert card["source_data"]["class_names"] == trained_run.class_names
    assert card["training"]["config"]["model"]["backbone"] == "mobilenet_v2_0.35"
    assert "/" not in card["training"]["config"]["data"]["source"], "local paths are redacted"
    assert card["metrics"]["test"]["accuracy"] == trained_run.metrics["test"]["accuracy"]
    readme = (published / PublishedDir.README).read_text()
    assert f"[batch, {SIZE}, {SIZE}, 3]" in readme and "hub.KerasLayer" in readme
    PublishedDir(published).check()  # every file matches the manifest


@pytest.mark.slow  # kept out of the default suite for its 360 s budget
def test_hub_keras_layer_reproduces_the_runs_features_and_fine_tunes(published, trained_run):
    import tensorflow as tf
    import tensorflow_hub as hub

    pixels = _images()
    layer = hub.KerasLayer(str(published), trainable=True)
    got = np.asarray(layer(pixels / 255.0, training=False))
    np.testing.assert_allclose(got, _run_features(trained_run.model, pixels), atol=1e-4)
    assert layer.trainable_variables and len(layer.variables) > len(layer.trainable_variables)
    trained = np.asarray(layer(pixels / 255.0, training=True))
    assert np.abs(trained - got).max() > 1e-3, "training=True must switch BatchNorm to batch statistics"
    before = [v.numpy().copy() for v in layer.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(layer(pixels / 255.0, training=True)))
    grads = tape.gradient(loss, layer.trainable_variables)
    tf.keras.optimizers.SGD(0.1).apply_gradients(zip(grads, layer.trainable_variables, strict=True))
    moved = sum(not np.array_equal(b, v.numpy()) for b, v in zip(before, layer.trainable_variables, strict=True))
    assert moved > len(before) // 2, f"one step moved only {moved} of {len(before)} variables"
    obj = hub.load(str(published))
    assert np.asarray(obj(pixels / 255.0)).shape == got.shape and hasattr(obj, "regularization_losses")


@pytest.mark.slow  # loads the export with Keras and publishes again
def test_publishing_an_export_gives_the_same_backbone(published, trained_run, tmp_path):
    import tensorflow_hub as hub

    from tf_transfer.workflows import publishing

    out = publishing.publish(str(trained_run.export_path), str(tmp_path / "from_export"))
    card = PublishedDir(out).card()
    assert card["training"]["from"] == {"export": f"shapes/{trained_run.export_path.name}"}
    pixels = _images(seed=5) / 255.0
    a = hub.KerasLayer(str(out))(pixels)
    b = hub.KerasLayer(str(published))(pixels)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_a_partial_or_altered_publication_is_refused_by_name(published, tmp_path):
    from tf_transfer.models import backbones

    cut = shutil.copytree(published, tmp_path / "cut")
    (cut / "variables" / "variables.index").unlink()
    with pytest.raises(BackboneError, match=r"variables/variables\.index is missing"):
        backbones.build(f"hub:{cut}", "none", SIZE)
    altered = shutil.copytree(published, tmp_path / "altered")
    with (altered / "saved_model.pb").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BackboneError, match=r"saved_model\.pb does not match its checksum"):
        backbones.build(f"hub:{altered}", "none", SIZE)
    unlisted = shutil.copytree(published, tmp_path / "unlisted")
    (unlisted / PublishedDir.MANIFEST).unlink()
    with pytest.raises(BackboneError, match="no SHA256SUMS"):
        backbones.build(f"hub:{unlisted}", "none", SIZE)
    assert backbones.default_image_size(f"hub:{published}") == SIZE, "the card gives the image size"


def test_publish_refuses_to_overwrite_and_names_bad_sources(published, trained_run, tmp_path):
    from tf_transfer.workflows import publishing

    with pytest.raises(RunError, match="exists and is not empty; pass --overwrite"):
        publishing.publish(str(trained_run.run_dir), str(published))
    with pytest.raises(RunError, match="is not a run folder"):
        publishing.publish(str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # publishes again, to ram://
def test_publish_to_a_url(trained_run):
    from tf_transfer.workflows import publishing

    out = publishing.publish(str(trained_run.run_dir), f"ram://published-{uuid.uuid4().hex[:8]}/backbone")
    PublishedDir(out).check()
    assert PublishedDir(out).card()["input"]["shape"][1] == SIZE
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".partial")]
    assert isinstance(fs.path(str(out)), fs.GPath)


@pytest.mark.slow  # a training run on the published backbone
def test_train_on_the_published_backbone(published, shapes_dir, tmp_path):
    from tf_transfer.workflows import recipe

    config = make_config(tmp_path, str(shapes_dir), name="from_published", **{
        "model.backbone": f"hub:{published}", "data.image_size": 0, "phase1.epochs": 2, "phase2.epochs": 1})
    result = recipe.run(config)
    assert result.metrics["test"]["accuracy"] >= 0.8, result.metrics["test"]["accuracy"]
    assert result.model.input_shape[1] == SIZE, "the image size comes from the card"
