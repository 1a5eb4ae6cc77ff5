"""The serving graph: what an exported model does with a request.

Signatures (names, inputs and outputs are documented in the README):

- ``serving_default``: ``image_bytes`` string [batch] (encoded JPEG/PNG/BMP/GIF/WebP, what TF
  Serving's REST API passes for ``{"b64": ...}``) -> ``scores``, ``classes``, ``top_k_scores``,
  ``top_k_classes``.
- ``serving_pixels`` / ``serving_pixels_uint8``: ``pixels`` float32 / uint8 [batch, H, W, 3] (0-255,
  any size) -> the same outputs.
- ``classify``: ``inputs`` serialized ``tf.Example`` with an ``image/encoded`` bytes feature ->
  ``classes`` and ``scores`` (TF Serving's Classify API).

Every path resizes and quantizes exactly as the training pipeline (``images.resize``), and the model
applies its own preprocessing, so training and serving cannot disagree. Image sizes are read from
the file header before decoding (``images.size_checks``, shared with the training-data scan):
unsupported formats, zero-sized images, animated WebP and images over the pixel budget (GIF: width x
height x frames) fail the request before any large allocation.
"""

from __future__ import annotations

import tensorflow as tf

from tf_transfer.data import images

DEFAULT = "serving_default"
PIXELS = "serving_pixels"
PIXELS_UINT8 = "serving_pixels_uint8"
CLASSIFY = "classify"
CLASSIFY_METHOD = "tensorflow/serving/classify"
BYTES_INPUT = "image_bytes"
PIXELS_INPUT = "pixels"
EXAMPLE_INPUT = "inputs"
EXAMPLE_FEATURE = "image/encoded"


def build(model, class_names: list[str], image_size: int, top_k: int, max_pixels: int, tta: bool = False) -> dict:
    """The tf.functions to save as signatures, keyed by signature name. With `tta`, every path averages
    each image's scores with those of its horizontal flip."""
    names = tf.constant(class_names)
    k = max(1, min(top_k, len(class_names)))
    spec = tf.TensorSpec([image_size, image_size, 3], tf.uint8)

    def outputs(pixels_uint8):
        pixels = tf.cast(pixels_uint8, tf.float32)
        scores = tf.cast(model(pixels, training=False), tf.float32)
        if tta:
            scores = (scores + tf.cast(model(tf.reverse(pixels, axis=[2]), training=False), tf.float32)) / 2.0
        classes = tf.tile(names[tf.newaxis], [tf.shape(scores)[0], 1])
        top_scores, top_index = tf.math.top_k(scores, k=k)
        return {"scores": scores, "classes": classes,
                "top_k_scores": top_scores, "top_k_classes": tf.gather(names, top_index)}

    def decode_batch(image_bytes):
        # Images decode independently: let the loop run them in parallel across cores.
        return tf.map_fn(lambda b: images.checked_decode(b, image_size, max_pixels), image_bytes,
                         fn_output_signature=spec, parallel_iterations=32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    def serve_bytes(image_bytes):
        return outputs(decode_batch(image_bytes))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name=PIXELS_INPUT)])
    def serve_pixels(pixels):
        return outputs(images.resize(tf.clip_by_value(pixels, 0.0, 255.0), image_size))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=PIXELS_INPUT)])
    def serve_pixels_uint8(pixels):
        return outputs(images.resize(pixels, image_size))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLE_INPUT)])
    def classify(inputs):
        features = tf.io.parse_example(inputs, {EXAMPLE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        out = outputs(decode_batch(features[EXAMPLE_FEATURE]))
        return {"classes": out["classes"], "scores": out["scores"]}

    return {DEFAULT: serve_bytes, PIXELS: serve_pixels, PIXELS_UINT8: serve_pixels_uint8, CLASSIFY: classify}


def mark_classify(export_dir: str) -> None:
    """Give the classify signature TF Serving's Classify method name (tf.saved_model.save writes
    every signature as Predict), so TF Serving offers :classify for it."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = tf.io.gfile.join(export_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        if CLASSIFY in meta_graph.signature_def:
            meta_graph.signature_def[CLASSIFY].method_name = CLASSIFY_METHOD
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(proto.SerializeToString())
