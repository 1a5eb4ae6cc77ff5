"""The text modality: what an example is for the recipe when the inputs are texts.

It answers the recipe's questions as ``workflows.images.Images`` does (data split, pipelines, model,
cached features, export), for raw UTF-8 strings into a BERT-family encoder with its tokenizer inside
the model. There is no augmentation, so phase 1 caches one feature vector per text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tf_transfer import folders
from tf_transfer.config import Config
from tf_transfer.data import texts
from tf_transfer.data.datasets import ImageData
from tf_transfer.errors import ConfigError
from tf_transfer.models import classifier, text_backbones
from tf_transfer.serving import savedmodel
from tf_transfer.serving.savedmodel import ExportSpec
from tf_transfer.tasks import Task
from tf_transfer.training.distribute import Session
from tf_transfer.workflows.images import Images, Splits

log = logging.getLogger(__name__)


# BERT fine-tuning defaults (AdamW, warm-up, a small rate, every layer), measured on ../shared's emotion set
# (BENCHMARKS.md, "Text classification"). They replace the image defaults where a flag was left at its default.
TEXT_DEFAULTS = {
    "phase2.unfreeze": "all", "phase2.epochs": 3, "phase2.learning_rate": 1e-4, "phase2.weight_decay": 0.01,
    "phase2.patience": 0, "phase1.epochs": 10, "phase1.patience": 0, "model.dropout": 0.1, "data.batch_size": 32,
}


def text_defaults(config: Config) -> Config:
    """The config with TEXT_DEFAULTS where it still has the (image) default values; logged."""
    base = Config()
    changes = {k: v for k, v in TEXT_DEFAULTS.items() if _get(config, k) == _get(base, k) != v}
    if changes:
        log.info("Text defaults: %s (set these flags to choose otherwise)",
                 ", ".join(f"{k}={v}" for k, v in changes.items()))
    return config.replace(**changes) if changes else config


def _get(config: Config, dotted: str):
    section, _, key = dotted.partition(".")
    return getattr(getattr(config, section), key)


def is_text(config: Config) -> bool:
    """Whether a config trains a text classifier (its backbone is a text encoder)."""
    return text_backbones.is_text(config.model.backbone, config.model.preprocessor)


def tfidf_baseline(config: Config, data: ImageData) -> dict:
    """--baseline tfidf: TF-IDF (1-2 grams) + logistic regression trained on the run's own training split;
    its val/test metrics, computed as the run's are."""
    import numpy as np

    from tf_transfer.evaluation import metrics as metrics_lib
    from tf_transfer.models import tfidf

    def split(name: str) -> tuple[list[str], list[int]]:
        return [e.key for e in data.splits[name]], [e.label for e in data.splits[name]]

    train_texts, train_labels = split("train")
    log.info("Baseline: TF-IDF (1-2 grams) + logistic regression on the same %d training texts", len(train_texts))
    model = tfidf.train(train_texts, train_labels, split("val") if data.splits["val"] else None, data.num_classes,
                        config.seed)
    out = {}
    for name in ("val", "test"):
        if data.splits[name]:
            found, labels = split(name)
            out[name] = metrics_lib.metrics(np.asarray(labels), tfidf.probabilities(model, found),
                                            list(data.class_names), config.evaluation.top_k)
    return out


class Texts(Images):
    """Text classification inputs: strings in, tokenised inside the model."""

    kind = "text"

    def __init__(self, config: Config, prepared: ImageData | None = None):
        if config.data.tasks:
            raise ConfigError("--tasks: several heads are for images so far; a text run learns one label column "
                              "(--label-column)")
        # Texts are not augmented: one cached feature vector per text, and the saved config says so.
        self.config = config.replace(**{"data.augment": False}) if config.data.augment else config
        self.prepared = prepared
        self.image_size = config.model.max_seq_length  # what the feature cache keys on as the input size

    def prepare_data(self) -> ImageData:
        p1, p2 = self.config.phase1, self.config.phase2
        log.info("Text recipe: phase 1 %d epochs on the frozen encoder, then phase 2 unfreezes %s for %d epochs at "
                 "%g (%s, warm-up %g, weight decay %g)", p1.epochs, p2.unfreeze, p2.epochs, p2.learning_rate,
                 p2.schedule, p2.warmup, p2.weight_decay)
        return texts.prepare(self.config.data, self.config.seed)

    def splits(self, data: ImageData, session: Session) -> Splits:
        c, batch = self.config, session.global_batch
        log.info("%s", session.describe(c.runtime.jit_compile))

        def plain(split: str):
            return texts.pipeline(data, split, c.data, c.seed, batch_size=batch) if data.splits[split] else None

        train = texts.pipeline(data, "train", c.data, c.seed, training=True, batch_size=batch, shard=session.shard)
        return Splits(train, plain("val"), plain("test"))

    def _backbone(self, weights: str):
        m = self.config.model
        return text_backbones.build(m.backbone, weights, m.preprocessor, m.max_seq_length, m.pooling)

    def build_model(self, heads: list[Task], session: Session):
        """The classifier, built in the strategy's scope: text -> tokenise -> encoder -> pooler -> heads."""
        with session.scope():
            bb = self._backbone(self.config.model.weights)
            log.info("Backbone: %s, up to %d tokens per text", bb.description, self.config.model.max_seq_length)
            return classifier.build_text_classifier(bb, heads, self.config.model)

    def rebuild(self, heads: list[Task], weights_file: Path):
        model = classifier.build_text_classifier(self._backbone("none"), heads, self.config.model)
        folders.load_model_weights(model, str(weights_file))
        return model

    def export_spec(self, model, data: ImageData, metrics: dict) -> ExportSpec:
        """Labels, config, metrics and example texts (verification and warm-up) of a text export."""
        c = self.config
        if c.export.tflite:
            log.warning("TFLite export skipped: text models tokenise with tensorflow-text ops TFLite does not have")
        resolved = {"max_seq_length": c.model.max_seq_length, "preprocess": model.get_layer("preprocess").mode,
                    "pooling": model.get_layer("pooler").mode, "input": "text"}
        samples = texts.sample_texts(data) if c.export.warmup_from_data else list(savedmodel.SYNTHETIC_TEXTS)
        return ExportSpec(
            class_names=data.class_names, image_size=0,
            config={**savedmodel.redact_paths(c.to_dict()), "resolved": resolved}, metrics=metrics,
            samples=[t.encode("utf-8") for t in samples], top_k=c.export.top_k, verify=c.export.verify,
            kind="text")
