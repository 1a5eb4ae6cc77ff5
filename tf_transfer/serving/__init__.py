"""Serving: the exported model's signatures (``signatures``), SavedModel export and verification
(``savedmodel``), TFLite conversion (``tflite``), clients for TF Serving's REST and gRPC APIs
(``clients``) and the local TF-Serving-compatible server (``server``).

The client API is re-exported lazily, so ``from tf_transfer.serving import RestClient`` (and
``tf_transfer.serving.predict_files``) work without importing TensorFlow.
"""

from __future__ import annotations

import importlib

_CLIENT_NAMES = ("BadRequest", "FileResult", "GrpcClient", "LocalModel", "ModelNotFound", "Prediction",
                 "RestClient", "ServerUnavailable", "ServingError", "client_for", "expand_inputs", "predict_files")


def __getattr__(name: str):
    if name in _CLIENT_NAMES:
        return getattr(importlib.import_module("tf_transfer.serving.clients"), name)
    raise AttributeError(f"module 'tf_transfer.serving' has no attribute {name!r}")
