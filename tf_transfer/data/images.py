"""Image decoding shared by the training pipeline and the serving signature, and the up-front
check that finds unreadable files before training starts."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

import tensorflow as tf

log = logging.getLogger(__name__)

# Formats tf.io.decode_image reads; GIFs give their first frame.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def decode(contents: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF/WebP bytes -> uint8 [H, W, 3]; grayscale and RGBA become RGB."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize to size x size (bilinear) and return uint8, so cached and served pixels are identical."""
    image = tf.image.resize(image, [size, size], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def decode_jpeg_at_least(contents: tf.Tensor, size: int) -> tf.Tensor:
    """Decode a JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps both sides >= size.

    libjpeg scales in the inverse DCT, so a 12-megapixel photo bound for 224 pixels decodes at 1/8
    for a fraction of the work, and the smaller image then resizes with less aliasing.
    """
    shape = tf.image.extract_jpeg_shape(contents)
    short = tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
    steps = tf.math.floor(tf.math.log(short / float(size)) / tf.math.log(2.0))  # largest usable power of 2
    index = tf.cast(tf.clip_by_value(steps, 0.0, 3.0), tf.int32)
    branches = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in (1, 2, 4, 8)]
    image = tf.switch_case(index, branches)
    image.set_shape([None, None, 3])
    return image


def decode_and_resize(contents: tf.Tensor, size: int) -> tf.Tensor:
    """The one image path of tf_transfer: used by the data pipeline and by the exported model."""
    image = tf.cond(tf.io.is_jpeg(contents), lambda: decode_jpeg_at_least(contents, size), lambda: decode(contents))
    return resize(image, size)


def _probe(contents: tf.Tensor) -> tf.Tensor:
    """Decode enough to prove a file is a whole, non-empty image; returns its [H, W, C] shape.

    JPEGs are decoded at 1/8 scale: entropy decoding still reads every block (so truncation is
    caught) while the inverse DCT costs a fraction.
    """
    shape = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8)),
        lambda: tf.shape(decode(contents)),
    )
    tf.debugging.assert_positive(tf.reduce_prod(shape), message="image has zero size")
    return shape


_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def clean_error(error: Exception) -> str:
    """A TensorFlow op error as one readable line (the op's own message, without graph noise)."""
    message = getattr(error, "message", None) or str(error)
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    lines = [line.strip() for line in message.splitlines()]
    lines = [line for line in lines if line and not line.startswith(_NOISE)]
    if not lines:
        return type(error).__name__
    text = re.sub(r"\s*\[\[\{\{node .*$|\s*\[Op:.*$", "", lines[0])
    asserted = re.match(r"assertion failed: \[(.*?)\.?\s*\]", text)
    return asserted.group(1) if asserted else text


def find_unreadable(paths: Sequence[str]) -> dict[str, str]:
    """Decode every file once, in parallel; return {path: reason} for those that are not images.

    Runs the same decoders as training, so a file that passes cannot fail mid-epoch.
    """
    if not paths:
        return {}
    start = time.monotonic()
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), list(paths)))
    ds = ds.map(lambda i, p: (i, _probe(tf.io.read_file(p))),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors().prefetch(tf.data.AUTOTUNE)
    readable = set()
    last_report = start
    for i, _ in ds.as_numpy_iterator():
        readable.add(int(i))
        now = time.monotonic()
        if now - last_report > 10:
            log.info("  checked %d/%d files...", len(readable), len(paths))
            last_report = now
    bad = {}
    for i, path in enumerate(paths):
        if i in readable:
            continue
        try:  # re-run eagerly only for the failures, to say why
            _probe(tf.io.read_file(path))
            bad[path] = "could not be decoded"
        except (tf.errors.OpError, ValueError) as e:
            bad[path] = clean_error(e)
    log.debug("checked %d files in %.1fs", len(paths), time.monotonic() - start)
    return bad
