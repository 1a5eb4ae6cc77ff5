"""The text baseline: TF-IDF of word 1- and 2-grams and a softmax layer (multinomial logistic regression),
in TensorFlow itself, so a text run can show what transfer bought over a bag of words.

``TextVectorization`` (``output_mode="tf_idf"``) learns the vocabulary and inverse document frequencies
from the training texts only; the model takes raw strings, as the transfer model does, so it scores
the same splits the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tf_transfer._keras import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TfidfSettings:
    """The baseline's fixed recipe: the one measured on ../shared's emotion tweets (BENCHMARKS.md, "Text
    classification", the TF-IDF row; benchmarks/bench_text.py trains it through this module)."""

    max_tokens: int = 30_000  # the most frequent 1- and 2-grams of the training texts
    ngrams: int = 2
    l2: float = 1e-5  # weight decay of the softmax kernel
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 40
    min_steps_per_epoch: int = 50  # a small training set is passed over several times per epoch
    patience: int = 5  # epochs without a better validation accuracy before stopping (best weights kept)


def build(train_texts: list[str], num_classes: int, settings: TfidfSettings = TfidfSettings()) -> keras.Model:
    """strings -> TF-IDF (vocabulary and idf adapted on `train_texts`) -> Dense softmax."""
    vectorize = keras.layers.TextVectorization(max_tokens=settings.max_tokens, ngrams=settings.ngrams,
                                               output_mode="tf_idf", name="tfidf")
    vectorize.adapt(tf.data.Dataset.from_tensor_slices(train_texts).batch(1024))
    inputs = keras.Input((), dtype=tf.string, name="text")
    x = vectorize(tf.reshape(inputs, [-1, 1]))
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities",
                                 kernel_regularizer=keras.regularizers.L2(settings.l2))(x)
    return keras.Model(inputs, outputs, name="tfidf_logistic_regression")


def train(train_texts: list[str], train_labels: list[int], val: tuple[list[str], list[int]] | None,
          num_classes: int, seed: int = 0, settings: TfidfSettings = TfidfSettings()) -> keras.Model:
    """Fit the baseline: Adam on cross-entropy, early stopping on the validation accuracy (when there is a
    validation split) with the best weights restored."""
    keras.utils.set_random_seed(seed)
    model = build(train_texts, num_classes, settings)
    model.compile(keras.optimizers.Adam(settings.learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = [keras.callbacks.EarlyStopping("val_accuracy", patience=settings.patience, mode="max",
                                               restore_best_weights=True)] if val else []
    # an epoch of at least min_steps_per_epoch steps: a few hundred labelled texts still get enough of them
    steps = max(-(-len(train_texts) // settings.batch_size), settings.min_steps_per_epoch)
    examples = tf.data.Dataset.from_tensor_slices((train_texts, np.asarray(train_labels, np.int64)))
    batches = examples.shuffle(len(train_texts), seed=seed).repeat().batch(settings.batch_size)
    history = model.fit(batches, steps_per_epoch=steps, epochs=settings.epochs, verbose=0, callbacks=callbacks,
                        validation_data=(tf.constant(val[0]), np.asarray(val[1])) if val else None)
    log.info("TF-IDF baseline: %d n-grams, %d epochs", len(model.get_layer("tfidf").get_vocabulary()),
             len(history.history["loss"]))
    return model


def probabilities(model: keras.Model, texts: list[str], batch_size: int = 256) -> np.ndarray:
    return model.predict(tf.constant(texts), batch_size=batch_size, verbose=0)
