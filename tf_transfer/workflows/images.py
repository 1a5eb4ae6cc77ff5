"""The image modality: what an example is for the recipe when the inputs are image files.

The recipe (``workflows.recipe``) asks a modality for the data split, the tf.data pipelines, the
model (raw inputs in, preprocessing inside, one head per task), phase 1's cached features and what
goes into the export. This module answers for images; a text modality answers the same questions.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from tf_transfer.config import Config
from tf_transfer.data import datasets
from tf_transfer.data.datasets import ImageData
from tf_transfer.folders import RunDir
from tf_transfer.models import backbones, classifier
from tf_transfer.serving import savedmodel
from tf_transfer.serving.savedmodel import ExportSpec
from tf_transfer.tasks import Task
from tf_transfer.training import distribute, features, phases
from tf_transfer.training.distribute import Session
from tf_transfer.training.trainer import Inputs

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """The batched tf.data pipelines of a run (val and test are None when the split is empty)."""

    train: object
    val: object | None
    test: object | None

    def evaluation(self) -> dict:
        return {"val": self.val, "test": self.test}


class Images:
    """Image classification inputs: files decoded and resized in the graph, pixels 0-255 into the model."""

    kind = "image"

    def __init__(self, config: Config, prepared: ImageData | None = None):
        self.config = config
        self.prepared = prepared  # a split made beforehand (the tuner prepares one per search)
        self.image_size = config.data.image_size or backbones.default_image_size(config.model.backbone)

    def data(self, run: RunDir) -> ImageData:
        """The run's split: the saved one when the run folder has it (resume), else prepared and saved."""
        if run.started():
            data = datasets.load_split(run)
            log.info("Resuming run %s (phase %s, after epoch %s)", run.location, run.state().get("phase", 1),
                     run.state().get("last_epoch", 0))
        else:
            data = self.prepared or self.prepare_data()
            run.save_config(self.config)
            data.save(run)
            log.info("Run folder: %s", run.location)
        log.info("Data: %s (%d classes)\n%s", data.source, data.num_classes, data.summary_table())
        if data.skipped:
            shown = sorted(data.skipped.items())[:10]
            log.warning("Skipped %d unreadable file(s) (all listed in %s):\n%s", len(data.skipped),
                        run.path / RunDir.SKIPPED, "\n".join(f"  {p}: {r}" for p, r in shown))
        return data

    def prepare_data(self) -> ImageData:
        """Resolve, check and split the source (a new run)."""
        return datasets.prepare(self.config.data, self.config.seed)

    def check_paths(self, session: Session) -> None:
        """A remote TPU cannot read this machine's disk: refuse local paths before any work."""
        c = self.config
        distribute.check_tpu_paths(session.topology.kind, c.runtime.tpu, {
            "--data": c.data.source.removeprefix("csv:") if not c.data.source.startswith("tfds:") else "",
            "--backbone": c.model.backbone.split(":", 1)[1] if ":" in c.model.backbone else "",
            "--weights": c.model.weights if c.model.weights not in ("imagenet", "none") else ""})

    def splits(self, data: ImageData, session: Session) -> Splits:
        """Shuffled, augmented training batches and plain val/test batches, at the global batch size."""
        c, size, batch = self.config, self.image_size, session.global_batch
        log.info("%s", session.describe(c.runtime.jit_compile))
        if session.shard:
            workers = session.topology.workers
            how = (f"by data (every worker reads all TFDS records and keeps 1/{workers})" if data.kind == "tfds"
                   else f"by file (each of the {workers} workers reads 1/{workers} of the image files)")
            log.info("Input sharding: %s", how)

        def plain(split: str):
            if not data.splits[split]:
                return None
            return datasets.pipeline(data, split, c.data, size, c.seed, batch_size=batch)

        train = datasets.pipeline(data, "train", c.data, size, c.seed, training=True, batch_size=batch,
                                  shard=session.shard)
        return Splits(train, plain("val"), plain("test"))

    def heads(self, data: ImageData) -> list[Task]:
        """One head over the data's classes, or one per named task."""
        return data.tasks

    def class_weight(self, data: ImageData) -> dict | None:
        """Keras' class_weight for one task (named tasks fold theirs into the pipeline's loss weights)."""
        return data.class_weights() if self.config.data.class_weights and not data.named_tasks else None

    def build_model(self, heads: list[Task], session: Session):
        """The classifier, built in the strategy's scope: pixels -> preprocess -> backbone -> pooler -> heads."""
        m = self.config.model
        with session.scope():
            bb = backbones.build(m.backbone, m.weights, self.image_size, m.cut_layer, m.preprocess)
            log.info("Backbone: %s, input %dx%d, preprocessing %r", bb.description, self.image_size,
                     self.image_size, bb.preprocess)
            model = classifier.build_classifier(bb, heads, m, train_bn=self.config.phase2.train_bn)
            if m.weights == "none" and self.config.phase2.train_bn:
                classifier.set_batchnorm_momentum(model, phases.SCRATCH_BN_MOMENTUM)
        return model

    def rebuild(self, heads: list[Task], weights_file: Path):
        """A plain copy of the trained model outside any strategy (multi-worker evaluation, re-export)."""
        return classifier.rebuild(self.config.model, heads, self.image_size, str(weights_file),
                                  self.config.phase2.train_bn)

    def cached_features(self, model, data: ImageData, session: Session) -> Inputs | None:
        """Phase 1 on cached backbone features: the head (shared with `model`) and its datasets; None when
        the cache is off for this run (the log says why)."""
        c, size, batch = self.config, self.image_size, session.global_batch
        root = features.plan(c, session.topology.workers, session.topology.kind)
        if root is None:
            return None
        views = features.effective_views(c)
        shared = {"extract": features.extractor(model),
                  "weights": features.weights_digest(model.get_layer("backbone"))}
        train = features.ensure(model, c, data, "train", size, root, views, batch, **shared)
        val = features.ensure(model, c, data, "val", size, root, 1, batch, **shared) if data.splits["val"] else None
        with session.scope():
            head = features.head_model(model)
        log.info("Phase 1 trains the head on cached features (%d train vectors x %d view(s))", train.count,
                 train.views)
        n = data.num_classes

        def targets(split: str):
            return datasets.targets(data, data.splits[split], c.data) if data.named_tasks else None

        return Inputs(head, features.dataset(train, n, c.seed, c.data.shuffle_buffer, batch, targets("train")),
                      features.dataset(val, n, c.seed, batch_size=batch, targets=targets("val")) if val else None)

    def export_spec(self, model, data: ImageData, metrics: dict) -> ExportSpec:
        """What the export holds besides the model: labels, config (with resolved values), metrics, samples."""
        c = self.config
        variants = [v for v in c.export.tflite.split(",") if v]
        representative = []
        if "int8" in variants and not data.named_tasks:  # calibration images for int8, from the training split
            plain = dataclasses.replace(c.data, augment=False, cache="none")
            ds = datasets.pipeline(data, "train", plain, self.image_size, c.seed, batch_size=1)
            representative = [batch[0].numpy() for batch in ds.take(100)]
        resolved = {"image_size": self.image_size, "preprocess": model.get_layer("preprocess").mode}
        samples = sample_bytes(data, "test" if data.splits["test"] else "train") if c.export.warmup_from_data \
            else savedmodel.synthetic_images(self.image_size, seed=c.seed)
        return ExportSpec(
            class_names=data.class_names, image_size=self.image_size,
            config={**savedmodel.redact_paths(c.to_dict()), "resolved": resolved}, metrics=metrics,
            samples=samples,
            top_k=c.export.top_k, max_image_pixels=c.export.max_image_pixels, tflite=variants,
            representative=representative, verify=c.export.verify, tta=c.export.tta,
            tasks=data.named_tasks, thresholds=metrics.get("thresholds", {}),
            keras_traces=c.model.backbone not in backbones.REGISTRY)


def sample_bytes(data: ImageData, split: str, count: int = 8) -> list[bytes]:
    """Encoded bytes of a few images of a split (for export verification)."""
    ds = datasets.encoded_images(data, data.splits[split][:count])
    return [b for b, _ in ds.as_numpy_iterator()]
