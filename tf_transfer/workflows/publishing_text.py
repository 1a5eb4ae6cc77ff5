"""Publish a text run's encoder: a preprocessor and an encoder, each a reusable SavedModel in the TF-Hub
BERT contract with its model card and checksum manifest (see tf_transfer.models.reusable_text)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from tf_transfer import folders
from tf_transfer.folders import PublishedDir
from tf_transfer.fs import GPath
from tf_transfer.models import reusable_text

log = logging.getLogger(__name__)


def publish_text(src, final: Path | GPath, license: str) -> Path | GPath:
    """Write `src` (publishing.Source of a text run) to final/encoder and final/preprocess, whole or not at
    all, after a round trip through hub.KerasLayer; returns `final`."""
    with folders.atomic_dir(final, replace=True) as tmp:
        encoder_dir, preprocess_dir = tmp / PublishedDir.ENCODER, tmp / PublishedDir.PREPROCESSOR
        reusable_text.save(reusable_text.encoder_model(src.classifier), encoder_dir)
        with tempfile.TemporaryDirectory() as vocab_dir:  # the SavedModel copies the vocabulary in as an asset
            reusable_text.save(reusable_text.preprocessor_model(src.classifier, Path(vocab_dir)), preprocess_dir)
        check = reusable_text.check_round_trip(src.classifier, encoder_dir, preprocess_dir, src.samples)
        log.info("Reloaded with hub.KerasLayer (the encoder trainable): the run's features on %d texts (max "
                 "difference %.2g), %d trainable variables", check["texts"], check["max_feature_diff"],
                 check["trainable_variables"])
        card = model_card(src, check, license)
        for folder in (encoder_dir, preprocess_dir):
            folders.write_json(folder / PublishedDir.CARD, card)
            folders.write_text(folder / PublishedDir.README, readme(card))
            PublishedDir(folder).write_manifest()
        folders.write_text(tmp / PublishedDir.README, readme(card))
    log.info("Published the text encoder of %s to %s", next(iter(src.origin.values())), final)
    return final


def model_card(src, check: dict, license: str) -> dict:
    """The card of both folders: the contract, the tokenizer, the architecture, data, recipe, metrics."""
    from tf_transfer.workflows import recipe

    tokenize, model_cfg = src.classifier.get_layer("preprocess"), src.config.get("model", {})
    width = check["feature_size"]
    ids = {"dtype": "int32", "shape": [None, None]}
    return {
        "format": "tf_transfer published text encoder: two reusable SavedModels in the TF-Hub BERT contract",
        "preprocessor": {"folder": PublishedDir.PREPROCESSOR, "input": {"name": "text", "dtype": "string",
                                                                         "shape": [None]},
                         "outputs": {k: ids for k in ("input_word_ids", "input_mask", "input_type_ids")},
                         "tokenizer": getattr(tokenize, "mode", "TF-Hub preprocessing model"),
                         "max_seq_length": getattr(tokenize, "max_seq_length", None),
                         "lower_case": getattr(tokenize, "lower_case", None),
                         "vocab_size": len(getattr(tokenize, "vocab", [])) or None},
        "encoder": {"folder": PublishedDir.ENCODER,
                    "inputs": {k: ids for k in ("input_word_ids", "input_mask", "input_type_ids")},
                    "outputs": {"sequence_output": {"dtype": "float32", "shape": [None, None, width]},
                                "pooled_output": {"dtype": "float32", "shape": [None, width]},
                                "default": {"dtype": "float32", "shape": [None, width]}}},
        "architecture": {"backbone": model_cfg.get("backbone", ""),
                         "pooling": src.classifier.get_layer("pooler").mode},
        "source_data": {"source": src.config.get("data", {}).get("source", ""), "class_names": src.class_names},
        "training": {"from": src.origin, "config": src.config},
        "metrics": {k: src.metrics[k] for k in ("val", "test", "phase1", "mlm") if k in src.metrics},
        "versions": recipe.versions(),
        "license": license,
        "published": time.strftime("%Y-%m-%d"),
        "round_trip_check": check,
    }


def readme(card: dict) -> str:
    """The card as README.md: the two folders, how to use them, where they came from."""
    pre, enc = card["preprocessor"], card["encoder"]
    width = enc["outputs"]["pooled_output"]["shape"][1]
    origin = _origin(card)
    return f"""# Published text encoder: {card['architecture']['backbone']}

Two reusable SavedModels in the TF-Hub BERT contract, published by tf_transfer.

- **`{pre['folder']}/`** (the preprocessor): a batch of UTF-8 strings in; `input_word_ids`, `input_mask`,
  `input_type_ids` (int32 `[batch, seq]`) out; {pre['tokenizer']}, up to {pre['max_seq_length']} tokens;
  the vocabulary is the SavedModel's asset `assets/vocab.txt`.
- **`{enc['folder']}/`** (the encoder): those in; `sequence_output` `[batch, seq, {width}]`, `pooled_output`
  and `default` `[batch, {width}]` out. `pooled_output` is what the run's classifier head saw
  ({card['architecture']['pooling']} pooling).
- **Source data**: `{card['source_data']['source']}`; {origin}.
- **License**: {card['license']}. Published {card['published']} with TensorFlow {card['versions']['tensorflow']}.

Use it (import `tensorflow_text` first: the preprocessor's ops live there):

```python
import tensorflow_text  # noqa: F401
import tensorflow_hub as hub
preprocess = hub.KerasLayer("PATH/{pre['folder']}")
encoder = hub.KerasLayer("PATH/{enc['folder']}", trainable=True)  # fine-tunable
pooled = encoder(preprocess(["a text"]))["pooled_output"]
```

or as a tf_transfer backbone: `python -m tf_transfer.train --backbone hub:PATH/{enc['folder']} --preprocessor
hub:PATH/{pre['folder']} --data csv:...`. Each folder's `{PublishedDir.MANIFEST}` lists a SHA-256 per file;
tf_transfer checks it before loading. The full recipe, metrics and versions are in `{PublishedDir.CARD}`.
"""


def _origin(card: dict) -> str:
    """How the encoder was trained, in a few words (for the README)."""
    metrics = card["metrics"]
    if "mlm" in metrics:
        m = metrics["mlm"]
        before, after = (m.get(k, {}).get("masked_accuracy") for k in ("before", "after"))
        scores = (f"; masked-token accuracy on {m.get('val_texts')} held-out texts {before:.4f} before, "
                  f"{after:.4f} after" if before is not None and after is not None else "")
        return (f"adapted by masked-language modelling on {m.get('train_texts')} texts (labels not used) for "
                f"{m.get('epochs')} epochs{scores}")
    test = metrics.get("test") or metrics.get("val") or {}
    accuracy = f"{test['accuracy']:.4f}" if "accuracy" in test else "not recorded"
    return (f"{len(card['source_data']['class_names'])} classes; accuracy of the classifier it came from: "
            f"{accuracy}")
