"""The serving graph: what an exported model does with a request.

Signatures (names, inputs and outputs are documented in the README):

- ``serving_default``: ``image_bytes`` string [batch] (encoded JPEG/PNG/BMP/GIF/WebP, what TF
  Serving's REST API passes for ``{"b64": ...}``) -> ``scores``, ``classes``, ``top_k_scores``,
  ``top_k_classes``. A model with several heads returns these per single-label task as
  ``<task>_scores``, ..., and per multi-label task ``<task>_classes`` (the labels over their
  thresholds, best first, padded with ''), ``<task>_scores`` (theirs, padded with 0) and
  ``<task>_all_scores`` (every label, in the order of the task's labels file).
- ``serving_pixels`` / ``serving_pixels_uint8``: ``pixels`` float32 / uint8 [batch, H, W, 3] (0-255,
  any size) -> the same outputs.
- ``classify``: ``inputs`` serialized ``tf.Example`` with an ``image/encoded`` bytes feature ->
  ``classes`` and ``scores`` (TF Serving's Classify API; one-task models only).

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
TEXT_INPUT = "text"
TEXT_FEATURE = "text"


def single_label(scores, class_names: list[str], top_k: int, prefix: str = "") -> dict:
    """A softmax head's outputs: every class's score, the class names, and the top k of both."""
    names = tf.constant(class_names)
    k = max(1, min(top_k, len(class_names)))
    classes = tf.tile(names[tf.newaxis], [tf.shape(scores)[0], 1])
    top_scores, top_index = tf.math.top_k(scores, k=k)
    return {f"{prefix}scores": scores, f"{prefix}classes": classes,
            f"{prefix}top_k_scores": top_scores, f"{prefix}top_k_classes": tf.gather(names, top_index)}


def multi_label(scores, class_names: list[str], thresholds: list[float], prefix: str) -> dict:
    """A sigmoid head's outputs: the labels over their thresholds (best first, padded with '') and
    their scores (padded with 0), and every label's score in the order of the task's labels file."""
    above = scores >= tf.constant(thresholds, tf.float32)
    # Labels over their thresholds first (best first), then the rest: probabilities lie in [0, 1].
    order = tf.argsort(scores + 2.0 * tf.cast(above, scores.dtype), axis=-1, direction="DESCENDING", stable=True)
    ranked = tf.gather(scores, order, batch_dims=1)
    over = tf.gather(above, order, batch_dims=1)
    return {f"{prefix}classes": tf.where(over, tf.gather(tf.constant(class_names), order), ""),
            f"{prefix}scores": tf.where(over, ranked, 0.0), f"{prefix}all_scores": scores}


def head_outputs(probabilities, tasks: list, top_k: int, thresholds: dict) -> dict:
    """Every task's outputs, named <task>_... (one unnamed task: today's scores/classes/top_k_...)."""
    if not isinstance(probabilities, dict):
        return single_label(probabilities, list(tasks[0].class_names), top_k)
    out = {}
    for t in tasks:
        scores = probabilities[t.head]
        out.update(multi_label(scores, list(t.class_names), thresholds[t.name], t.prefix) if t.multi_label
                   else single_label(scores, list(t.class_names), top_k, t.prefix))
    return out


def build(model, tasks: list, image_size: int, top_k: int, max_pixels: int, tta: bool = False,
          thresholds: dict | None = None) -> dict:
    """The tf.functions to save as signatures, keyed by signature name (`tasks`: tf_transfer.tasks.Task;
    `thresholds`: per-label decision thresholds of multi-label tasks). With `tta`, every path averages
    each image's scores with those of its horizontal flip. The classify signature (TF Serving's Classify
    API: one list of classes and scores per example) is there for one-task models."""
    spec = tf.TensorSpec([image_size, image_size, 3], tf.uint8)

    def outputs(pixels_uint8):
        pixels = tf.cast(pixels_uint8, tf.float32)
        scores = tf.nest.map_structure(lambda p: tf.cast(p, tf.float32), model(pixels, training=False))
        if tta:
            flipped = model(tf.reverse(pixels, axis=[2]), training=False)
            scores = tf.nest.map_structure(lambda a, b: (a + tf.cast(b, tf.float32)) / 2.0, scores, flipped)
        return head_outputs(scores, tasks, top_k, thresholds or {})

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

    named = {DEFAULT: serve_bytes, PIXELS: serve_pixels, PIXELS_UINT8: serve_pixels_uint8}
    return named if tasks[0].name else {**named, CLASSIFY: classify}


def build_text(model, tasks: list, top_k: int, thresholds: dict | None = None) -> dict:
    """The signatures of a text model: ``serving_default`` takes ``text`` (UTF-8 strings [batch]; the
    model tokenises them) and returns the outputs of `head_outputs`; ``classify`` takes tf.Examples
    with a ``text`` bytes feature (one-task models)."""

    def outputs(text):
        scores = tf.nest.map_structure(lambda p: tf.cast(p, tf.float32), model(text, training=False))
        return head_outputs(scores, tasks, top_k, thresholds or {})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=TEXT_INPUT)])
    def serve_text(text):
        return outputs(text)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLE_INPUT)])
    def classify(inputs):
        features = tf.io.parse_example(inputs, {TEXT_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        out = outputs(features[TEXT_FEATURE])
        return {"classes": out["classes"], "scores": out["scores"]}

    return {DEFAULT: serve_text} if tasks[0].name else {DEFAULT: serve_text, CLASSIFY: classify}


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
