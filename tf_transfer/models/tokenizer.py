"""WordPiece tokenisation inside the model: raw UTF-8 strings in, the BERT encoder inputs out.

Built on tensorflow-text's classic ``BertTokenizer`` ops (case folding, NFD normalisation, punctuation
splitting, WordPiece), which TF Serving builds have carried for longest. Import tensorflow_text before
loading a SavedModel that uses them (:func:`require_text_ops`), or its ops are unregistered.

Hostile input is bounded and never fails the request: a string is cut to
``max_seq_length * BYTES_PER_TOKEN`` bytes, invalid UTF-8 is replaced with U+FFFD, then to its first
``max_seq_length - 2`` whitespace-separated words before tokenising (each word gives at least one
token, so no kept token is lost; only a word of nothing but control characters, which gives none, can
count for one), an empty string becomes ``[CLS] [SEP]``, and tokens past the sequence length are
dropped. The cost of a string is bounded by its sequence length; the batch is bounded by the caller
(TF Serving's batching, the local server's --max-batch).
"""

from __future__ import annotations

import hashlib

import tensorflow as tf

from tf_transfer._keras import keras
from tf_transfer.errors import BackboneError
from tf_transfer.models.text import BYTES_PER_TOKEN

SPECIALS = ("[CLS]", "[SEP]", "[UNK]", "[PAD]")


def require_text_ops():
    """tensorflow_text, imported (it registers the tokenizer ops), or a clear error."""
    try:
        import tensorflow_text
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise BackboneError(f"text models need tensorflow-text 2.21 (pip install -r requirements.txt): {e}") from None
    return tensorflow_text


def read_vocab(path) -> list[str]:
    """A vocab.txt: one token per line, the line number is the id."""
    vocab = path.read_text(encoding="utf-8").splitlines()
    missing = [t for t in SPECIALS if t not in vocab]
    if missing:
        raise BackboneError(f"{path}: the vocabulary has no {', '.join(missing)}; expected a BERT WordPiece vocab.txt")
    return vocab


class BertTokenize(keras.layers.Layer):
    """strings [batch] -> {input_word_ids, input_mask, input_type_ids} int32 [batch, length], where
    length is the longest sequence in the batch (at most max_seq_length): padding costs nothing."""

    def __init__(self, vocab: list[str], lower_case: bool = True, max_seq_length: int = 128,
                 vocab_file: str | None = None, **kwargs):
        """`vocab_file` (the same tokens, one per line): the table is read from it, so a SavedModel of
        this layer carries the vocabulary as an asset (assets/vocab.txt) as TF-Hub preprocessors do."""
        super().__init__(**kwargs)
        if max_seq_length < 3:
            raise BackboneError(f"--max-seq-length: expected at least 3 ([CLS], a token, [SEP]), got {max_seq_length}")
        self.vocab, self.lower_case, self.max_seq_length = list(vocab), lower_case, max_seq_length
        digest = hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:12]
        self.mode = f"wordpiece-{digest}-{'uncased' if lower_case else 'cased'}-{max_seq_length}"
        self.ids = {t: vocab.index(t) for t in SPECIALS}
        initializer = tf.lookup.TextFileInitializer(
            vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER) if vocab_file else tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.vocab), tf.range(len(self.vocab), dtype=tf.int64), key_dtype=tf.string,
            value_dtype=tf.int64)
        self.table = tf.lookup.StaticVocabularyTable(initializer, num_oov_buckets=1)
        self.tokenizer = require_text_ops().BertTokenizer(self.table, token_out_type=tf.int64,
                                                          lower_case=lower_case, unknown_token="[UNK]")

    def cut(self, strings):
        """What of each string reaches the WordPiece ops: its first max_seq_length * BYTES_PER_TOKEN bytes
        (invalid UTF-8 replaced), then its first max_seq_length - 2 words; every whitespace-separated word
        gives at least one token, so words past the sequence are never kept."""
        strings = tf.strings.substr(tf.reshape(strings, [-1]), 0, self.max_seq_length * BYTES_PER_TOKEN)
        strings = tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="replace")
        words = tf.strings.split(strings)[:, :self.max_seq_length - 2]
        return tf.strings.reduce_join(words, axis=-1, separator=" ")

    def call(self, strings):
        tokens = self.tokenizer.tokenize(self.cut(strings)).merge_dims(-2, -1)[:, :self.max_seq_length - 2]
        tokens = tf.where(tokens >= len(self.vocab), tf.cast(self.ids["[UNK]"], tokens.dtype), tokens)
        rows = tokens.nrows()
        cls = tf.fill([rows, 1], tf.constant(self.ids["[CLS]"], tokens.dtype))
        sep = tf.fill([rows, 1], tf.constant(self.ids["[SEP]"], tokens.dtype))
        ids = tf.concat([cls, tokens, sep], axis=1)
        dense = ids.to_tensor(default_value=self.ids["[PAD]"])  # as long as the batch's longest sequence
        mask = tf.sequence_mask(ids.row_lengths(), tf.shape(dense, out_type=tf.int64)[1], dtype=tf.int32)
        return {"input_word_ids": tf.cast(dense, tf.int32), "input_mask": mask,
                "input_type_ids": tf.zeros_like(mask)}

    def get_config(self):
        return {**super().get_config(), "vocab": self.vocab, "lower_case": self.lower_case,
                "max_seq_length": self.max_seq_length}
