"""Masked-language modelling (BERT's pre-training objective) on a BERT-family encoder of ours: the masking
of a batch of token ids, the prediction head tied to the encoder's word embeddings, and the model that
masks each batch as it trains.

Masking follows BERT: 15% of the WordPiece tokens of each text (never [CLS], [SEP] or padding; at least
one per text that has a token) are chosen; 80% of those become [MASK], 10% a random token, 10% stay as
they are; the model predicts the original token at every chosen position. Predictions are made only at
those positions (at most ``max_predictions`` per text), so the output layer costs a fraction of a full
vocabulary projection per token.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tf_transfer._keras import keras
from tf_transfer.errors import BackboneError
from tf_transfer.models.text import INPUTS, BertConfig

MASK_RATE = 0.15
TRANSFORM = "cls.predictions.transform."
HEAD_KEYS = {"dense.kernel": TRANSFORM + "dense.weight", "dense.bias": TRANSFORM + "dense.bias",
             "norm.gamma": TRANSFORM + "LayerNorm.weight", "norm.beta": TRANSFORM + "LayerNorm.bias",
             "bias": "cls.predictions.bias"}  # a BertForMaskedLM / BertForPreTraining checkpoint's head


def max_predictions(max_seq_length: int) -> int:
    """Predictions per text: 15% of the longest text's tokens, rounded up."""
    return max(1, math.ceil(MASK_RATE * max_seq_length))


def mask_batch(encoded: dict, specials: dict[str, int], vocab_size: int, predictions: int,
               seed: tf.Tensor | None = None) -> tuple[dict, tf.Tensor, tf.Tensor]:
    """(masked encoder inputs + "masked_positions" [B, P], original ids [B, P], weights [B, P]) for a batch
    of encoder inputs (input_word_ids, input_mask, input_type_ids: int32 [B, T])."""
    ids, mask = encoded["input_word_ids"], encoded["input_mask"]
    seeds = tf.random.experimental.stateless_split(seed if seed is not None else tf.constant([0, 0], tf.int64), 4)
    maskable = tf.logical_and(tf.cast(mask, tf.bool), tf.logical_and(
        tf.not_equal(ids, specials["[CLS]"]), tf.not_equal(ids, specials["[SEP]"])))
    # a random order of each text's maskable positions; the first n of it are chosen
    scores = tf.where(maskable, tf.random.stateless_uniform(tf.shape(ids), seeds[0]), -1.0)
    width = tf.minimum(predictions, tf.shape(ids)[1])
    top = tf.math.top_k(scores, k=width)
    count = tf.reduce_sum(tf.cast(maskable, tf.int32), axis=1)
    chosen = tf.clip_by_value(tf.cast(tf.round(MASK_RATE * tf.cast(count, tf.float32)), tf.int32),
                              tf.minimum(count, 1), width)
    weights = tf.cast(tf.sequence_mask(chosen, width), tf.float32)
    positions = tf.where(weights > 0, top.indices, 0)
    rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(positions))
    where = tf.stack([rows, positions], axis=-1)
    labels = tf.gather_nd(ids, where)
    draw = tf.random.stateless_uniform(tf.shape(positions), seeds[1])
    random_ids = tf.random.stateless_uniform(tf.shape(positions), seeds[2], 0, vocab_size, dtype=tf.int32)
    replaced = tf.where(draw < 0.8, tf.fill(tf.shape(positions), specials["[MASK]"]),
                        tf.where(draw < 0.9, random_ids, labels))
    keep = tf.boolean_mask(where, weights > 0)
    masked_ids = tf.tensor_scatter_nd_update(ids, keep, tf.boolean_mask(replaced, weights > 0))
    inputs = {**encoded, "input_word_ids": masked_ids, "masked_positions": positions}
    return inputs, labels, weights



class MaskedLmHead(keras.layers.Layer):
    """BERT's prediction head: a transform (Dense, GELU, LayerNorm), then the transpose of the word
    embeddings (the output layer tied to them, passed in at call time) and a bias per token."""

    def __init__(self, cfg: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.dense = keras.layers.Dense(cfg.hidden_size, kernel_initializer=keras.initializers.TruncatedNormal(
            stddev=0.02), name="transform")
        self.norm = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name="transform_layer_norm")

    def build(self, input_shape):
        self.bias = self.add_weight("output_bias", [self.cfg.vocab_size], initializer="zeros")
        super().build(input_shape)

    def call(self, sequence, positions, word_embeddings):
        picked = tf.gather(sequence, positions, batch_dims=1)  # [B, P, H]
        x = self.norm(tf.nn.gelu(self.dense(picked), approximate=False))
        return tf.matmul(x, word_embeddings, transpose_b=True) + self.bias  # [B, P, vocab] logits


class MaskedLanguageModel(keras.Model):
    """strings in; each training batch is tokenised and masked in the graph, then the encoder and the head
    predict the masked tokens. The masks of a training step are seeded by (seed, step), so a resumed run
    masks its remaining steps as an uninterrupted run would; evaluation masks with a fixed seed, so the
    held-out score of one epoch compares with the next."""

    def __init__(self, tokenize, encoder: keras.Model, cfg: BertConfig, seed: int, **kwargs):
        super().__init__(**kwargs)
        if "[MASK]" not in tokenize.vocab:
            raise BackboneError("the encoder's vocab.txt has no [MASK] token; masked-language modelling needs it")
        self.tokenize, self.encoder = tokenize, encoder
        self.head = MaskedLmHead(cfg, name="mlm_head")
        self.specials = {t: tokenize.vocab.index(t) for t in ("[CLS]", "[SEP]", "[MASK]")}
        self.vocab_size, self.seed = cfg.vocab_size, seed
        self.predictions = max_predictions(tokenize.max_seq_length)
        self.loss_tracker = keras.metrics.Mean("masked_loss")
        self.accuracy = keras.metrics.Mean("masked_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def call(self, inputs, training=None):
        sequence = self.encoder({k: inputs[k] for k in INPUTS}, training=training)["sequence_output"]
        return self.head(sequence, inputs["masked_positions"], self.encoder.get_layer("embeddings").word)

    def masked(self, strings, step) -> tuple[dict, tf.Tensor, tf.Tensor]:
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        return mask_batch(self.tokenize(strings), self.specials, self.vocab_size, self.predictions, seed)

    def _loss(self, strings, step, training: bool):
        inputs, labels, weights = self.masked(strings, step)
        logits = self(inputs, training=training)
        per_token = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        loss = tf.reduce_sum(per_token * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        return loss, hits, weights

    def _results(self, loss, hits, weights) -> dict:
        self.loss_tracker.update_state(loss, sample_weight=tf.reduce_sum(weights))
        self.accuracy.update_state(hits, sample_weight=weights)
        mean = self.loss_tracker.result()
        return {"masked_loss": mean, "masked_accuracy": self.accuracy.result(), "perplexity": tf.exp(mean)}

    def train_step(self, strings):
        with tf.GradientTape() as tape:
            loss, hits, weights = self._loss(strings, self.optimizer.iterations, True)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return self._results(loss, hits, weights)

    def test_step(self, strings):
        return self._results(*self._loss(strings, -1, False))


def load_head(head: MaskedLmHead, tensors: dict[str, np.ndarray]) -> bool:
    """Fill the transform layer and output bias from a checkpoint that has them (BertForMaskedLM and
    BertForPreTraining checkpoints do; sentence-transformers ones do not, and the head then starts
    fresh). Returns whether they were found. The head must be built."""
    old = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
    found = {}
    for key, name in HEAD_KEYS.items():
        legacy = next((name.replace(a, b) for a, b in old.items() if name.endswith(a)), name)
        found[key] = tensors.get(name, tensors.get(legacy))
    if any(v is None for v in found.values()):
        return False
    targets = {"dense.kernel": head.dense.kernel, "dense.bias": head.dense.bias, "norm.gamma": head.norm.gamma,
               "norm.beta": head.norm.beta, "bias": head.bias}
    values = {key: found[key].T if key == "dense.kernel" else found[key] for key in targets}
    for key, variable in targets.items():  # every shape checked before anything is assigned
        if tuple(values[key].shape) != tuple(variable.shape):
            raise BackboneError(f"the checkpoint's {HEAD_KEYS[key]} has shape {values[key].shape}; expected "
                                f"{tuple(variable.shape)}")
    for key, variable in targets.items():
        variable.assign(values[key].astype(np.float32))
    return True
