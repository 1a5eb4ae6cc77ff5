"""The backbone registry: every Keras Applications family, TF-Hub/Kaggle handles, and saved Keras models.

Each registered backbone knows its constructor, its default input size and its own preprocessing
(the Keras Applications module whose ``preprocess_input`` it was trained with).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tf_transfer import fs
from tf_transfer._keras import keras
from tf_transfer.errors import BackboneError, RunError
from tf_transfer.folders import PublishedDir
from tf_transfer.models import layers

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Weights that ship with tf_transfer, so the default backbone works offline.
VENDORED_WEIGHTS = {"mobilenet_v2_0.35": ASSETS / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"}


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    constructor: str  # attribute of keras.applications
    family: str  # keras.applications module whose preprocess_input this backbone expects
    image_size: int
    kwargs: dict = field(default_factory=dict)
    fixed_size_with_imagenet: bool = False  # NASNet's ImageNet weights need the default size


def _registry() -> dict[str, BackboneSpec]:
    specs: list[BackboneSpec] = []

    def add(name, constructor, family, size, **kwargs):
        fixed = kwargs.pop("fixed", False)
        specs.append(BackboneSpec(name, constructor, family, size, kwargs, fixed))

    for alpha in (0.25, 0.5, 0.75, 1.0):
        add(f"mobilenet_{alpha}", "MobileNet", "mobilenet", 224, alpha=alpha)
    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        add(f"mobilenet_v2_{alpha}", "MobileNetV2", "mobilenet_v2", 224, alpha=alpha)
    for size in ("small", "large"):
        ctor = f"MobileNetV3{size.title()}"
        for alpha in (0.75, 1.0):
            add(f"mobilenet_v3_{size}_{alpha}", ctor, "mobilenet_v3", 224, alpha=alpha)
        add(f"mobilenet_v3_{size}_minimalistic", ctor, "mobilenet_v3", 224, minimalistic=True)
    for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        add(f"efficientnet_b{i}", f"EfficientNetB{i}", "efficientnet", size)
    for suffix, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384), ("m", 480), ("l", 480)):
        add(f"efficientnetv2_{suffix}", f"EfficientNetV2{suffix.upper()}", "efficientnet_v2", size)
    for depth in (50, 101, 152):
        add(f"resnet{depth}", f"ResNet{depth}", "resnet", 224)
        add(f"resnet{depth}_v2", f"ResNet{depth}V2", "resnet_v2", 224)
    for depth, size in ((50, 160), (101, 192), (152, 224), (200, 256), (270, 256), (350, 256), (420, 320)):
        add(f"resnet_rs{depth}", f"ResNetRS{depth}", "resnet_rs", size)
    add("inception_v3", "InceptionV3", "inception_v3", 299)
    add("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299)
    add("xception", "Xception", "xception", 299)
    for depth in (121, 169, 201):
        add(f"densenet{depth}", f"DenseNet{depth}", "densenet", 224)
    for size in ("Tiny", "Small", "Base", "Large", "XLarge"):
        add(f"convnext_{size.lower()}", f"ConvNeXt{size}", "convnext", 224)
    add("nasnet_mobile", "NASNetMobile", "nasnet", 224, fixed=True)
    add("nasnet_large", "NASNetLarge", "nasnet", 331, fixed=True)
    add("vgg16", "VGG16", "vgg16", 224)
    add("vgg19", "VGG19", "vgg19", 224)
    for kind in ("x", "y"):
        for flops in ("002", "004", "006", "008", "016", "032", "040", "064", "080", "120", "160", "320"):
            add(f"regnet{kind}_{flops}", f"RegNet{kind.upper()}{flops}", "regnet", 224)

    out = {s.name: s for s in specs}
    # Plain family names mean width 1.0.
    for alias, target in (("mobilenet", "mobilenet_1.0"), ("mobilenet_v2", "mobilenet_v2_1.0"),
                          ("mobilenet_v3_small", "mobilenet_v3_small_1.0"),
                          ("mobilenet_v3_large", "mobilenet_v3_large_1.0")):
        out[alias] = out[target]
    return out


REGISTRY: dict[str, BackboneSpec] = _registry()


def names() -> list[str]:
    """Every registered Keras Applications backbone name."""
    return sorted(REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    key = name.strip().lower().replace("-", "_")
    if key not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(key, REGISTRY, n=4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(f"unknown backbone {name!r}.{hint} Run with --list-backbones to see all, or use "
                            "hub:HANDLE or model:PATH.")
    return REGISTRY[key]


@dataclass
class Backbone:
    """A built backbone and what the model around it needs to know."""

    layer: keras.layers.Layer  # named "backbone"
    preprocess: str  # "none", "unit", or a keras.applications module name
    image_size: int
    kind: str  # "keras" | "hub" | "model"
    description: str


def default_image_size(backbone: str) -> int:
    """The backbone's own input size: a published backbone's card says it; 224 for other handles and
    models without a fixed size."""
    if backbone.startswith("hub:") and _published(backbone[len("hub:"):]):
        return int(PublishedDir(backbone[len("hub:"):]).card().get("input", {}).get("shape", [0, 224])[1])
    if backbone.startswith(("hub:", "model:")):
        return 224
    return get_spec(backbone).image_size


def _offline_hint(what: str) -> str:
    return (f"{what} could not be downloaded (no internet access?). Download the file on a machine with "
            "internet access and pass its path with --weights PATH, or use --weights none to start from "
            "random initialisation.")


def _resolve_weights(spec: BackboneSpec, weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        vendored = VENDORED_WEIGHTS.get(spec.name)
        return str(vendored) if vendored and vendored.is_file() else "imagenet"
    path = fs.path(weights)
    if not path.is_file():
        raise BackboneError(f"--weights {weights}: no such file; expected 'imagenet', 'none' or a path to a "
                            f"weights file for {spec.name}")
    return str(fs.local_copy(path))  # Keras reads weights files (HDF5) from local disk only


def build_application(spec: BackboneSpec, weights: str, image_size: int) -> keras.Model:
    """A Keras Applications base (no top) named 'backbone'."""
    resolved = _resolve_weights(spec, weights)
    if resolved == "imagenet" and spec.fixed_size_with_imagenet and image_size != spec.image_size:
        raise BackboneError(f"{spec.name} ImageNet weights need --image-size {spec.image_size}, got {image_size}")
    ctor = getattr(keras.applications, spec.constructor)
    try:
        base = ctor(include_top=False, weights=resolved, input_shape=(image_size, image_size, 3), **spec.kwargs)
    except Exception as e:
        text = str(e)
        if resolved == "imagenet" and ("URL fetch failure" in text or "urlopen" in text or "HTTP" in text):
            raise BackboneError(f"{_offline_hint(f'ImageNet weights for {spec.name}')} ({text.splitlines()[0]})") from e
        if resolved not in (None, "imagenet"):
            raise BackboneError(f"could not load weights file {resolved} into {spec.name} "
                                f"(expected the no-top weights of this architecture): {text.splitlines()[0]}") from e
        raise BackboneError(f"could not build {spec.name} at {image_size}x{image_size}: {text.splitlines()[0]}") from e
    return keras.Model(base.inputs, base.outputs, name="backbone")


def build_hub(handle: str, image_size: int, name: str = "backbone") -> keras.layers.Layer:
    """A TF-Hub / Kaggle feature-vector handle (URL or local SavedModel folder) as a Keras layer."""
    import tensorflow as tf
    import tensorflow_hub as hub

    if _published(handle):  # published by tf_transfer: refuse a partial or altered copy with a clear message
        try:
            PublishedDir(handle).check()
        except RunError as e:
            raise BackboneError(f"hub:{handle}: {e}") from None
    try:
        # The I/O device option lets TPU workers read the SavedModel from the host (no-op elsewhere).
        options = tf.saved_model.LoadOptions(experimental_io_device="/job:localhost")
        return hub.KerasLayer(handle, trainable=False, name=name, load_options=options)
    except Exception as e:
        if not handle.startswith(("http://", "https://")) and fs.path(handle).exists():
            raise BackboneError(f"could not load SavedModel folder {handle} as a hub handle: {e}") from e
        raise BackboneError(
            f"TF-Hub handle {handle} could not be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
            "Without internet access, download the model (e.g. the .tar.gz from Kaggle Models), extract it, "
            "and pass hub:/path/to/extracted/folder."
        ) from e


def _published(handle: str) -> bool:
    return not handle.startswith(("http://", "https://")) and PublishedDir(handle).is_published()


def _last_feature_map(model: keras.Model) -> str:
    for layer in reversed(model.layers):
        shape = getattr(layer, "output_shape", None)
        if isinstance(shape, tuple) and len(shape) == 4:
            return layer.name
    raise BackboneError(f"model {model.name} has no layer with a 4-D (feature map) output; pass --cut-layer NAME")


def build_saved_model(path: str, cut_layer: str, image_size: int) -> keras.Model:
    """A saved Keras model (.keras, .h5 or SavedModel folder), cut at a named layer, named 'backbone'."""
    if not fs.path(path).exists():
        raise BackboneError(f"model:{path}: no such file or folder; expected a .keras/.h5 file or a SavedModel folder")
    p = fs.local_copy(path)  # .keras and .h5 files load from local disk only
    try:
        loaded = keras.models.load_model(str(p), compile=False, custom_objects=layers.custom_objects())
    except Exception as e:
        raise BackboneError(f"could not load {p} as a Keras model ({str(e).splitlines()[0]}); for a plain "
                            "SavedModel without Keras metadata use hub:PATH") from e
    name = cut_layer or _last_feature_map(loaded)
    try:
        output = loaded.get_layer(name).output
    except ValueError:
        raise BackboneError(f"model {p} has no layer named {name!r}; some of its layers: "
                            f"{', '.join(layer.name for layer in loaded.layers[-8:])}") from None
    fixed = tuple(loaded.inputs[0].shape[1:3])
    if None not in fixed and fixed != (image_size, image_size):
        raise BackboneError(f"model {p} takes {fixed[0]}x{fixed[1]} images; pass --image-size {fixed[0]}")
    return keras.Model(loaded.inputs, output, name="backbone")


def build(backbone: str, weights: str, image_size: int, cut_layer: str = "", preprocess: str = "auto") -> Backbone:
    """Build the backbone named by the config: a registry name, 'hub:HANDLE' or 'model:PATH'."""
    if backbone.startswith("hub:"):
        handle = backbone[len("hub:"):]
        layer = build_hub(handle, image_size)
        return Backbone(layer, preprocess if preprocess != "auto" else "unit", image_size, "hub", handle)
    if backbone.startswith("model:"):
        layer = build_saved_model(backbone[len("model:"):], cut_layer, image_size)
        mode = preprocess if preprocess != "auto" else "none"
        if preprocess == "auto":
            log.info("model: backbone gets raw 0-255 pixels; pass --preprocess if it expects scaled input")
        return Backbone(layer, mode, image_size, "model", backbone)
    spec = get_spec(backbone)
    layer = build_application(spec, weights, image_size)
    return Backbone(layer, preprocess if preprocess != "auto" else spec.family, image_size, "keras",
                    f"{spec.name} ({spec.constructor}{spec.kwargs or ''}, weights={weights})")
