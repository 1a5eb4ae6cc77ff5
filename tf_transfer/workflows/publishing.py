"""Publish the backbone of a trained run (or of an export) for others to fine-tune: a reusable
SavedModel in the TF-Hub format, with a model card (README.md and JSON) and a checksum manifest."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tf_transfer import config as config_lib
from tf_transfer import folders, fs
from tf_transfer.errors import RunError
from tf_transfer.folders import ModelDir, PublishedDir, RunDir
from tf_transfer.fs import GPath
from tf_transfer.models import reusable
from tf_transfer.serving import savedmodel

log = logging.getLogger(__name__)


@dataclass
class Source:
    """What is published: the trained classifier and what the card says about it."""

    classifier: object
    origin: dict  # {"run": name} or {"export": "<name>/<version>"}
    config: dict  # with local paths redacted
    class_names: list[str]
    metrics: dict
    kind: str = "image"  # "text": an encoder and its preprocessor are published (workflows.publishing_text)
    samples: list = field(default_factory=list)  # texts for a text encoder's round-trip check


def publish(source: str, out: str, license: str = "unspecified", overwrite: bool = False) -> Path | GPath:
    """Write `source`'s backbone to `out` (whole or not at all); returns `out`."""
    final = target(out, overwrite)
    src = load(source)
    if src.kind == "text":
        from tf_transfer.workflows.publishing_text import publish_text

        return publish_text(src, final, license)
    features = reusable.feature_model(src.classifier)
    with folders.atomic_dir(final, replace=True) as tmp:
        reusable.save(features, tmp)
        check = reusable.check_round_trip(features, tmp)
        log.info("Reloaded with hub.KerasLayer(trainable=True): same features (max difference %.2g), %d trainable "
                 "variables", check["max_feature_diff"], check["trainable_variables"])
        card = model_card(src, features, check, license)
        folders.write_json(tmp / PublishedDir.CARD, card)
        folders.write_text(tmp / PublishedDir.README, readme(card))
        PublishedDir(tmp).write_manifest()
    log.info("Published the backbone of %s to %s", next(iter(src.origin.values())), final)
    return final


def target(out: str, overwrite: bool = False) -> Path | GPath:
    """--out as a path, refused when it holds something and --overwrite is not given."""
    final = fs.path(out)
    if final.exists() and any(True for _ in final.iterdir()) and not overwrite:
        raise RunError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    return final


def next_step(out: Path | GPath) -> str:
    """What a command prints after publishing: where it is and how to fine-tune it."""
    if (fs.path(out) / PublishedDir.ENCODER).is_dir():
        return (f"Published: {out}\nFine-tune it: python -m tf_transfer.train --backbone hub:{out}/"
                f"{PublishedDir.ENCODER} --preprocessor hub:{out}/{PublishedDir.PREPROCESSOR} --data ...")
    return f"Published: {out}\nFine-tune it: python -m tf_transfer.train --backbone hub:{out} --data ..."


def load(source: str) -> Source:
    """A run folder (its final weights) or an export (a version folder or a model folder's latest)."""
    where = fs.path(source)
    if (where / ModelDir.SAVED_MODEL).is_file() or ModelDir(where).versions():
        return _from_export(folders.resolve_export(where))
    return _from_run(RunDir.existing(source))


def _from_run(run: RunDir) -> Source:
    from tf_transfer.data import datasets, texts
    from tf_transfer.workflows.recipe import modality_for

    config = config_lib.load(run.config_file)
    if not run.has_weights("final"):
        raise RunError(f"{run.location} has no final weights; expected a run folder that finished training")
    modality = modality_for(config)
    data = datasets.load_split(run)
    model = modality.rebuild(modality.heads(data), run.weights_file("final"))
    text = modality.kind == "text"
    return Source(model, {"run": run.path.name}, savedmodel.redact_paths(config.to_dict()), list(data.class_names),
                  run.read_json(RunDir.METRICS, {}) or {}, modality.kind, texts.sample_texts(data) if text else [])


def _from_export(version: Path | GPath) -> Source:
    from tf_transfer._keras import keras
    from tf_transfer.models import layers

    config = folders.read_json(version / ModelDir.CONFIG, {}) or {}
    if config.get("resolved", {}).get("input") == "text":
        raise RunError(f"{version} is a text model: publish the run folder it came from (config.json's \"run\" "
                       "names it), which holds the encoder's weights and its tokenizer")
    try:
        model = keras.models.load_model(str(version), compile=False, custom_objects=layers.custom_objects())
    except Exception as e:
        raise RunError(f"{version} could not be loaded as a tf_transfer export: {str(e).splitlines()[0]}") from e
    labels = [f"{t.prefix}{c}" for t in savedmodel.export_tasks(version) for c in t.class_names]  # every task's
    metrics = folders.read_json(version / ModelDir.METRICS, {}) or {}
    return Source(model, {"export": f"{version.parent.name}/{version.name}"}, config, labels, metrics)


def model_card(src: Source, features, check: dict, license: str) -> dict:
    """The card's JSON: contract, architecture, source data, recipe, metrics, versions, license."""
    from tf_transfer.workflows import recipe

    size, width = int(features.input_shape[1]), int(features.output_shape[-1])
    model_cfg = src.config.get("model", {})
    return {
        "format": "tf_transfer published backbone: a reusable SavedModel (TF-Hub image feature vector)",
        "input": {"name": "images", "shape": [None, size, size, 3], "dtype": "float32", "range": [0.0, 1.0]},
        "output": {"shape": [None, width], "dtype": "float32"},
        "architecture": {"backbone": model_cfg.get("backbone", ""),
                         "preprocessing": f"inside the model: '{src.classifier.get_layer('preprocess').mode}' "
                                          "on 0-255 pixels",
                         "pooling": "global average" if any(la.name == "pooler" for la in src.classifier.layers)
                         else "none (the backbone returns a vector)"},
        "source_data": {"source": src.config.get("data", {}).get("source", ""), "class_names": src.class_names},
        "training": {"from": src.origin, "config": src.config},
        "metrics": {k: src.metrics[k] for k in ("val", "test", "phase1") if k in src.metrics},
        "versions": recipe.versions(),
        "license": license,
        "published": time.strftime("%Y-%m-%d"),
        "round_trip_check": check,
    }


def readme(card: dict) -> str:
    """The card as README.md: what goes in and out, how to use it, where it came from."""
    size = card["input"]["shape"][1]
    test = card["metrics"].get("test") or card["metrics"].get("val") or {}
    accuracy = f"{test['accuracy']:.4f}" if "accuracy" in test else "not recorded"
    classes = ", ".join(card["source_data"]["class_names"][:20])
    return f"""# Published backbone: {card['architecture']['backbone']}

A reusable SavedModel in the TF-Hub format (image feature vector), published by tf_transfer.

- **Input** `images`: float32 `[batch, {size}, {size}, 3]`, RGB values in [0, 1].
- **Output**: float32 `[batch, {card['output']['shape'][1]}]` features ({card['architecture']['pooling']} pooling).
- **Preprocessing**: {card['architecture']['preprocessing']}; nothing to do besides scaling pixels to [0, 1].
- **Source data**: `{card['source_data']['source']}`, {len(card['source_data']['class_names'])} classes
  ({classes}); accuracy of the classifier it came from: {accuracy}.
- **License**: {card['license']}. Published {card['published']} with TensorFlow {card['versions']['tensorflow']}.

Use it:

```python
import tensorflow_hub as hub
features = hub.KerasLayer("PATH/TO/THIS/FOLDER", trainable=True)  # fine-tunable; `training` is honoured
```

or as a tf_transfer backbone: `python -m tf_transfer.train --backbone hub:PATH/TO/THIS/FOLDER --data ...`
(the image size is read from `{PublishedDir.CARD}`). `{PublishedDir.MANIFEST}` lists a SHA-256 per file; tf_transfer
checks it before loading. The full recipe, metrics and versions are in `{PublishedDir.CARD}`.
"""
