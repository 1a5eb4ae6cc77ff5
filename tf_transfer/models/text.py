"""Text encoders: a BERT-family encoder of our own in tf_keras, its WordPiece tokenizer in the graph, and
the loaders that fill it from a Hugging Face checkpoint folder (config.json, model.safetensors,
vocab.txt) or wrap a TF-Hub encoder and its preprocessing model.

Every encoder follows the TF-Hub BERT contract: a dict of ``input_word_ids``, ``input_mask`` and
``input_type_ids`` (int32 [batch, seq]) in, ``sequence_output`` [batch, seq, hidden] and
``pooled_output`` [batch, hidden] out. The tokenizer turns raw UTF-8 strings into that dict with
tensorflow-text's classic ``BertTokenizer`` ops, so an export takes strings, and training and serving
cannot disagree.

Model Garden does not install with TF 2.21 and keras-hub layers cannot live in a tf_keras model, hence
an encoder of our own: post-LayerNorm transformer blocks with exact (erf) GELU, as BERT and MiniLM.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import tensorflow as tf

from tf_transfer._keras import keras
from tf_transfer.errors import BackboneError

log = logging.getLogger(__name__)

INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
# A request's string is cut to this many bytes per token of --max-seq-length before tokenising: a
# multi-megabyte text costs no more than one that fills the sequence.
BYTES_PER_TOKEN = 64


@dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT-family encoder (the fields of a Hugging Face config.json we use)."""

    vocab_size: int
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1

    @classmethod
    def from_hf(cls, d: dict, where: str = "config.json") -> BertConfig:
        if d.get("model_type", "bert") not in ("bert",) or d.get("hidden_act", "gelu") not in ("gelu", "gelu_new"):
            raise BackboneError(f"{where}: model_type {d.get('model_type')!r} with hidden_act "
                                f"{d.get('hidden_act')!r}; expected a BERT-family encoder (model_type 'bert', gelu)")
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if k not in d]
        if missing:
            raise BackboneError(f"{where} has no {missing[0]!r}; expected a BERT config")
        cfg = cls(*(_bounded(d, key, where) for key in _BOUNDS),
                  *(_fraction(d, key, default, where) for key, default in _FRACTIONS))
        if cfg.hidden_size % cfg.num_heads:
            raise BackboneError(f"{where}: hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
                                f"{cfg.num_heads}; expected each head to get hidden_size / heads dimensions")
        if cfg.parameters() > MAX_PARAMETERS:
            raise BackboneError(f"{where}: an encoder of {cfg.parameters():,} parameters; expected at most "
                                f"{MAX_PARAMETERS:,} ({MAX_PARAMETERS * 4 >> 30} GB of float32) on one machine")
        return cfg

    def parameters(self) -> int:
        """How many weights an encoder of this shape has (embeddings and layers; the pooler aside)."""
        h = self.hidden_size
        layer = 4 * h * h + 2 * h * self.intermediate_size + 9 * h + self.intermediate_size
        return (self.vocab_size + self.max_position + self.type_vocab_size + 2) * h + self.num_layers * layer

    def to_hf(self) -> dict:
        return {"model_type": "bert", "hidden_act": "gelu", "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads, "intermediate_size": self.intermediate_size,
                "max_position_embeddings": self.max_position, "type_vocab_size": self.type_vocab_size,
                "layer_norm_eps": self.layer_norm_eps, "hidden_dropout_prob": self.dropout,
                "attention_probs_dropout_prob": self.attention_dropout}


# config.json fields: (name, default or None when required, lowest, highest); bounds a real BERT-family
# checkpoint is far inside (BERT-large: 24 layers, hidden 1024; multilingual vocabularies: 250k)
_BOUNDS = {"vocab_size": (None, 5, 1_000_000), "hidden_size": (None, 1, 8192),
           "num_hidden_layers": (None, 1, 96), "num_attention_heads": (None, 1, 128),
           "intermediate_size": (None, 1, 65_536), "max_position_embeddings": (512, 3, 65_536),
           "type_vocab_size": (2, 1, 1024)}
_FRACTIONS = (("layer_norm_eps", 1e-12), ("hidden_dropout_prob", 0.1), ("attention_probs_dropout_prob", 0.1))
MAX_PARAMETERS = 2_000_000_000


def _bounded(d: dict, key: str, where: str) -> int:
    default, low, high = _BOUNDS[key]
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BackboneError(f"{where}: {key} {value!r}; expected an integer from {low} to {high:,}")
    return value


def _fraction(d: dict, key: str, default: float, where: str) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise BackboneError(f"{where}: {key} {value!r}; expected a number from 0 to below 1")
    return float(value)


def _init():
    return keras.initializers.TruncatedNormal(stddev=0.02)


class Embeddings(keras.layers.Layer):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.norm = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name="layer_norm")
        self.drop = keras.layers.Dropout(cfg.dropout)

    def build(self, input_shape):
        c = self.cfg
        self.word = self.add_weight("word_embeddings", [c.vocab_size, c.hidden_size], initializer=_init())
        self.position = self.add_weight("position_embeddings", [c.max_position, c.hidden_size], initializer=_init())
        self.token_type = self.add_weight("token_type_embeddings", [c.type_vocab_size, c.hidden_size],
                                          initializer=_init())
        super().build(input_shape)

    def call(self, ids, type_ids, training=None):
        length = tf.shape(ids)[1]
        x = tf.gather(self.word, ids) + self.position[tf.newaxis, :length] + tf.gather(self.token_type, type_ids)
        return self.drop(self.norm(x), training=training)

    def get_config(self):
        return {**super().get_config(), **self.cfg.to_hf()}


class TransformerBlock(keras.layers.Layer):
    """One post-LayerNorm BERT layer: self-attention, add & norm, GELU feed-forward, add & norm."""

    def __init__(self, cfg: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        h = cfg.hidden_size
        dense = lambda units, name: keras.layers.Dense(units, kernel_initializer=_init(), name=name)  # noqa: E731
        self.query, self.key, self.value = dense(h, "query"), dense(h, "key"), dense(h, "value")
        self.attention_output = dense(h, "attention_output")
        self.attention_norm = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name="attention_layer_norm")
        self.intermediate = dense(cfg.intermediate_size, "intermediate")
        self.output_dense = dense(h, "output")
        self.output_norm = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name="output_layer_norm")
        self.drop = keras.layers.Dropout(cfg.dropout)
        self.attention_drop = keras.layers.Dropout(cfg.attention_dropout)

    def _heads(self, x, batch, length):
        heads = self.cfg.num_heads
        x = tf.reshape(x, [batch, length, heads, self.cfg.hidden_size // heads])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, x, attention_mask, training=None):
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        q, k, v = (self._heads(f(x), batch, length) for f in (self.query, self.key, self.value))
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.cfg.hidden_size // self.cfg.num_heads)
        blocked = 1.0 - tf.cast(attention_mask[:, tf.newaxis, tf.newaxis, :], scores.dtype)
        probs = self.attention_drop(tf.nn.softmax(scores + blocked * -10000.0, axis=-1), training=training)
        context = tf.reshape(tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3]), [batch, length, self.cfg.hidden_size])
        a = self.attention_norm(x + self.drop(self.attention_output(context), training=training))
        h = self.output_dense(tf.nn.gelu(self.intermediate(a), approximate=False))
        return self.output_norm(a + self.drop(h, training=training))

    def get_config(self):
        return {**super().get_config(), **self.cfg.to_hf()}


class ClsPooler(keras.layers.Layer):
    """BERT's pooled output: a tanh Dense layer on the first ([CLS]) token."""

    def __init__(self, hidden_size: int, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(hidden_size, activation="tanh", kernel_initializer=_init(), name="dense")

    def call(self, sequence):
        return self.dense(sequence[:, 0])


def bert_encoder(cfg: BertConfig, name: str = "backbone", with_pooler: bool = True) -> keras.Model:
    """The encoder as a functional model in the TF-Hub BERT contract; its layers are `embeddings`,
    `layer_0` ... `layer_<n-1>` and (with_pooler) `pooler_dense`, so `--unfreeze 2` or `--unfreeze layer_4`
    name them. Without the pooler (for mean pooling) the outputs are `sequence_output` alone."""
    inputs = {k: keras.Input((None,), dtype=tf.int32, name=k) for k in INPUTS}
    x = Embeddings(cfg, name="embeddings")(inputs["input_word_ids"], inputs["input_type_ids"])
    for i in range(cfg.num_layers):
        x = TransformerBlock(cfg, name=f"layer_{i}")(x, inputs["input_mask"])
    if not with_pooler:
        return keras.Model(inputs, {"sequence_output": x}, name=name)
    pooled = ClsPooler(cfg.hidden_size, name="pooler_dense")(x)
    return keras.Model(inputs, {"sequence_output": x, "pooled_output": pooled}, name=name)


class TextPooler(keras.layers.Layer):
    """The features a text head sees: the encoder's pooled output, or the masked mean of its tokens."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("pooled", "mean"):
            raise BackboneError(f"pooling {mode!r}: expected 'pooled' or 'mean'")
        self.mode = mode

    def call(self, outputs, mask):
        if self.mode == "pooled":
            return outputs["pooled_output"]
        return masked_mean(outputs["sequence_output"], mask)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def masked_mean(sequence, mask):
    """The mean of the token outputs over the attention mask (sentence-embedding models' pooling)."""
    m = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]
    return tf.reduce_sum(sequence * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), tf.cast(1e-9, sequence.dtype))
