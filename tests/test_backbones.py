"""Backbone registry, preprocessing, weights, TF-Hub handles and saved models."""

import urllib.request

import h5py
import numpy as np
import pytest

from tf_transfer._keras import keras
from tf_transfer.errors import BackboneError
from tf_transfer.models import backbones
from tf_transfer.models.layers import Preprocess

from .conftest import SHARED_WEIGHTS

FAMILIES = {"MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetB7",
            "EfficientNetV2B0", "EfficientNetV2B3", "EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L",
            "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2", "InceptionV3",
            "InceptionResNetV2", "Xception", "DenseNet121", "ConvNeXtTiny", "ConvNeXtXLarge", "NASNetMobile",
            "NASNetLarge", "VGG16", "VGG19", "RegNetX002", "RegNetY320", "ResNetRS50"}


def test_registry_covers_every_family_and_every_constructor_exists():
    constructors = {spec.constructor for spec in backbones.REGISTRY.values()}
    assert FAMILIES <= constructors
    for spec in backbones.REGISTRY.values():
        assert callable(getattr(keras.applications, spec.constructor)), spec.name
        assert hasattr(getattr(keras.applications, spec.family), "preprocess_input"), spec.name
    # every application in tf_keras is registered
    public = {n for n in dir(keras.applications) if n[0].isupper()}
    assert public <= constructors


def test_widths_and_sizes_by_name():
    assert backbones.get_spec("mobilenet_v2_0.35").kwargs == {"alpha": 0.35}
    assert backbones.get_spec("MobileNet-V2").kwargs == {"alpha": 1.0}
    assert backbones.get_spec("efficientnet_b3").image_size == 300
    assert backbones.get_spec("inception_v3").image_size == 299
    with pytest.raises(BackboneError, match="Did you mean mobilenet_v2"):
        backbones.get_spec("mobilenetv2")


@pytest.mark.parametrize("family", sorted({s.family for s in backbones.REGISTRY.values()}))
def test_preprocess_layer_matches_the_familys_own_function(family):
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, family).preprocess_input(x.copy())
    np.testing.assert_allclose(Preprocess(family)(x).numpy(), np.asarray(expected), rtol=1e-5, atol=1e-4)


def test_small_backbones_build_at_their_size():
    for name in ("mobilenet_0.25", "mobilenet_v3_small_0.75", "efficientnet_b0", "regnetx_002"):
        bb = backbones.build(name, "none", 64)
        assert bb.layer.name == "backbone" and len(bb.layer.output_shape) == 4


def _h5_arrays(path):
    out = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, obj: out.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return sorted(out, key=lambda a: (a.shape, float(np.sum(a))))


def test_imagenet_for_the_default_backbone_uses_the_vendored_file():
    bb = backbones.build("mobilenet_v2_0.35", "imagenet", 96)
    got = sorted((w.numpy() for w in bb.layer.weights), key=lambda a: (a.shape, float(np.sum(a))))
    want = _h5_arrays(backbones.VENDORED_WEIGHTS["mobilenet_v2_0.35"])
    assert len(got) == len(want) == 260
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="../shared/weights not present")
def test_weights_path_loads_that_file():
    bb = backbones.build("mobilenet_v2_0.35", str(SHARED_WEIGHTS), 64)
    conv = bb.layer.get_layer("Conv1").kernel.numpy()
    with h5py.File(SHARED_WEIGHTS, "r") as f:  # Keras 3 weights layout: layers stored by class order
        kernel = f["layers/conv2d/vars/0"][()]
    np.testing.assert_array_equal(conv, kernel)


def test_bad_weights_give_clear_errors(tmp_path):
    with pytest.raises(BackboneError, match="no such file"):
        backbones.build("mobilenet_v2_0.35", str(tmp_path / "nope.h5"), 64)
    with pytest.raises(BackboneError, match=r"could not load weights file .* into resnet50"):
        backbones.build("resnet50", str(backbones.VENDORED_WEIGHTS["mobilenet_v2_0.35"]), 64)


def test_failed_download_says_how_to_pass_local_weights(monkeypatch, tmp_path):
    # A dead proxy makes the real download fail fast and the same way on every machine.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    try:
        with pytest.raises(BackboneError, match="--weights PATH"):
            backbones.build("mobilenet_0.25", "imagenet", 128)
    finally:
        urllib.request.install_opener(None)  # urllib's global opener cached the dead proxy


def test_hub_handle_from_a_local_saved_model(hub_handle):
    bb = backbones.build(f"hub:{hub_handle}", "imagenet", 64)
    assert bb.kind == "hub" and bb.preprocess == "unit" and bb.layer.name == "backbone"
    out = bb.layer(np.zeros((2, 64, 64, 3), "float32"))
    assert out.shape == (2, 16)


def test_missing_hub_handle_explains_the_offline_route(tmp_path):
    with pytest.raises(BackboneError, match="could not load SavedModel folder"):
        backbones.build(f"hub:{tmp_path}", "imagenet", 64)
    with pytest.raises(BackboneError, match="hub:/path/to/extracted/folder"):
        backbones.build("hub:https://127.0.0.1:9/no/such/model", "imagenet", 64)


def test_saved_keras_model_cut_at_a_named_layer(tmp_path):
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Conv2D(6, 3, name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(3, name="logits")(x)
    path = tmp_path / "m.keras"
    keras.Model(inputs, x).save(path)
    assert backbones.build(f"model:{path}", "none", 64).layer.output_shape == (None, 60, 60, 6)  # last feature map
    assert backbones.build(f"model:{path}", "none", 64, cut_layer="c1").layer.output_shape == (None, 62, 62, 4)
    with pytest.raises(BackboneError, match="no layer named 'zz'"):
        backbones.build(f"model:{path}", "none", 64, cut_layer="zz")
    with pytest.raises(BackboneError, match="pass --image-size 64"):
        backbones.build(f"model:{path}", "none", 96)
