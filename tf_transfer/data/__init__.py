"""Data: sources (folders, CSV manifests, TFDS, the generated demo set), image decoding shared with the
exported model, seeded stratified splits and tf.data pipelines.

Modules: ``sources`` (resolve a ``--data`` value to labelled examples), ``images`` (decode and check
image files), ``datasets`` (splits and tf.data pipelines), ``demo`` (generated shapes). The names below are
re-exported lazily, so ``from tf_transfer import data; data.prepare(...)`` keeps working without
importing TensorFlow until it is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageData": "datasets", "prepare": "datasets", "pipeline": "datasets", "load_split": "datasets",
    "split_examples": "datasets", "encoded_images": "datasets", "augment": "datasets",
    "DataError": "sources", "Example": "sources", "SPLITS": "sources",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"tf_transfer.data.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'tf_transfer.data' has no attribute {name!r}")
