"""A trained text classifier's encoder as two reusable SavedModels in the TF-Hub BERT contract.

- The preprocessor: a batch of UTF-8 strings in; ``input_word_ids``, ``input_mask`` and
  ``input_type_ids`` (int32 ``[batch, seq]``) out; the WordPiece vocabulary is a SavedModel asset
  (``assets/vocab.txt``).
- The encoder: those three in; ``sequence_output`` ``[batch, seq, hidden]``, ``pooled_output`` and
  ``default`` (``[batch, hidden]``) out. ``pooled_output`` is what the run's head saw: the encoder's
  pooled output, or the masked mean of its tokens for a mean-pooling (sentence-embedding) model, so a
  consumer's ``pooled_output`` is the run's features either way.

Both are Keras SavedModels: ``hub.KerasLayer(path, trainable=True)`` fine-tunes the encoder, and
``python -m tf_transfer.train --backbone hub:ENCODER --preprocessor hub:PREPROCESSOR`` trains on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_transfer._keras import keras
from tf_transfer.errors import ExportError
from tf_transfer.models.text import INPUTS
from tf_transfer.models.tokenizer import BertTokenize, require_text_ops


def encoder_model(classifier: keras.Model) -> keras.Model:
    """The encoder inputs -> the classifier's own encoder and pooler (its layers and weights)."""
    inputs = {k: keras.Input((None,), dtype=tf.int32, name=k) for k in INPUTS}
    outputs = classifier.get_layer("backbone")(inputs)
    wanted = {k: v for k, v in outputs.items() if k in ("sequence_output", "pooled_output")}
    pooled = classifier.get_layer("pooler")(wanted, inputs["input_mask"])
    default = keras.layers.Activation("linear", name="default")(pooled)  # the same vector, TF-Hub's name for it
    return keras.Model(inputs, {"sequence_output": outputs["sequence_output"], "pooled_output": pooled,
                                "default": default}, name="encoder")


def preprocessor_model(classifier: keras.Model, vocab_dir: Path) -> keras.Model:
    """strings -> the encoder inputs, tokenised as the run did; a tf_transfer tokenizer is rebuilt to read
    its vocabulary from `vocab_dir`/vocab.txt (saved as an asset), a TF-Hub preprocessor is kept as it is."""
    tokenize = classifier.get_layer("preprocess")
    if isinstance(tokenize, BertTokenize):
        vocab_file = Path(vocab_dir) / "vocab.txt"
        vocab_file.write_text("".join(f"{t}\n" for t in tokenize.vocab), encoding="utf-8")
        tokenize = BertTokenize(tokenize.vocab, tokenize.lower_case, tokenize.max_seq_length,
                                vocab_file=str(vocab_file), name="preprocess")
    strings = keras.Input((), dtype=tf.string, name="text")
    return keras.Model(strings, tokenize(strings), name="preprocessor")


def save(model: keras.Model, folder: Path) -> None:
    model.save(str(folder), save_format="tf", include_optimizer=False)


def features(classifier: keras.Model, texts: list[str]) -> np.ndarray:
    """What the classifier's head sees for `texts` (its pooler's output)."""
    pooled = keras.Model(classifier.input, classifier.get_layer("pooler").output)
    return np.asarray(pooled(tf.constant(texts), training=False))


def check_round_trip(classifier: keras.Model, encoder_dir: Path, preprocessor_dir: Path, texts: list[str]) -> dict:
    """Reload both folders as a consumer does (hub.KerasLayer; the encoder trainable) and compare their
    pooled_output with the run's features on `texts`; ExportError if they differ or nothing trains."""
    import tensorflow_hub as hub

    require_text_ops()
    preprocess = hub.KerasLayer(str(preprocessor_dir))
    encoder = hub.KerasLayer(str(encoder_dir), trainable=True)
    outputs = encoder(preprocess(tf.constant(texts)), training=False)
    got, want = np.asarray(outputs["pooled_output"]), features(classifier, texts)
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    result = {"max_feature_diff": diff, "feature_size": int(want.shape[-1]), "texts": len(texts),
              "trainable_variables": len(encoder.trainable_variables), "variables": len(encoder.variables)}
    if diff > 1e-4 * max(1.0, float(np.abs(want).max())):
        raise ExportError(f"the published encoder does not reproduce the run's features (max difference {diff:.3g})")
    if not encoder.trainable_variables:
        raise ExportError("the published encoder has no trainable variables; hub.KerasLayer could not fine-tune it")
    if not np.array_equal(np.asarray(outputs["default"]), got):
        raise ExportError("the published encoder's default output differs from its pooled_output")
    return result
