"""TFLite conversion of a trained classifier: float pixels [1, S, S, 3] (0-255) in, probabilities out.

TFLite has no image decoder among its builtin ops, so the TFLite model starts at resized pixels;
preprocessing is still inside it. Variants: float, dynamic (dynamic-range int8 weights), float16
(float16 weights), int8 (full-integer weights and activations, calibrated on training images; float
input and output).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

FILENAMES = {"float": "model.tflite", "dynamic": "model_dynamic.tflite", "float16": "model_float16.tflite",
             "int8": "model_int8.tflite"}


def convert(model, image_size: int, variant: str, out_dir: Path, representative: Sequence[np.ndarray] = ()) -> Path:
    """Write one TFLite variant of `model` into out_dir; returns its path."""
    if variant not in FILENAMES:
        raise ValueError(f"unknown TFLite variant {variant!r}; expected one of {', '.join(FILENAMES)}")

    @tf.function(input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name="pixels")])
    def predict(pixels):
        return {"scores": tf.cast(model(pixels, training=False), tf.float32)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([predict.get_concrete_function()], model)
    if variant != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        if not len(representative):
            raise ValueError("int8 TFLite conversion needs representative images from the training split")

        def calibration():
            for pixels in representative:
                yield [np.asarray(pixels, np.float32).reshape(1, image_size, image_size, 3)]

        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILENAMES[variant]
    path.write_bytes(converter.convert())
    log.info("Wrote TFLite %s model %s (%.1f MB)", variant, path, path.stat().st_size / 1e6)
    return path


def interpreter_class():
    """LiteRT's interpreter (ai_edge_litert, the successor of tf.lite.Interpreter, which is deprecated),
    or TensorFlow's where ai_edge_litert does not install."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - platforms without an ai_edge_litert wheel
        return tf.lite.Interpreter
    return Interpreter


def predict(path: str | Path, pixels: np.ndarray) -> np.ndarray:
    """Scores for a batch of uint8/float pixels [N, S, S, 3] with the LiteRT interpreter (one at a time)."""
    interpreter = interpreter_class()(model_path=str(path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    scores = []
    for image in np.asarray(pixels, np.float32):
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        scores.append(interpreter.get_tensor(out["index"])[0])
    return np.stack(scores)
