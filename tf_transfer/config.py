"""The run configuration: one frozen dataclass tree, saved as JSON next to every run and export.

This module imports no TensorFlow, so that the CLI can answer ``--help`` at once.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tf_transfer import folders, fs
from tf_transfer.errors import ConfigError

TFLITE_VARIANTS = ("float", "dynamic", "float16", "int8")
__all__ = ["Config", "ConfigError", "from_dict", "leaves", "load"]


def _opt(default: Any, help: str, flag: str | None = None, choices: tuple | None = None,
         const: Any = None) -> Any:
    """A config field with its CLI help text (and optionally its flag name, allowed values, and the
    value a bare flag means)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "const": const})


@dataclass(frozen=True)
class DataConfig:
    source: str = _opt(
        "demo",
        "Images to learn from: a folder with one subfolder per class (or train/val/test subfolders "
        "holding class subfolders), 'tfds:NAME' for a TensorFlow Datasets name, 'csv:PATH' for a "
        "path,label manifest, or 'demo' for a small generated dataset. With a text backbone: 'csv:PATH' with "
        "a text and a label column, a folder of .txt files per class, or 'tfds:NAME' of a text dataset.",
        flag="data",
    )
    image_size: int = _opt(0, "Square input size in pixels; 0 uses the backbone's default size.")
    batch_size: int = _opt(32, "Images per training step.")
    val_fraction: float = _opt(0.15, "Share of each class held out for validation (when the source has no val split).")
    test_fraction: float = _opt(0.15, "Share of each class held out for testing (when the source has no test split).")
    cache: str = _opt("auto", "Cache decoded, resized images: 'memory', 'none', a folder for an on-disk cache, or "
                      "'auto' (memory when they fit in half the available memory, else on disk).")
    shuffle_buffer: int = _opt(2048, "Shuffle buffer size for the training split (images).")
    augment: bool = _opt(True, "Augment the training split (flip, rotation, zoom, translation, contrast).")
    flip: str = _opt("horizontal", "Random flips.",
                     choices=("horizontal", "vertical", "horizontal_and_vertical", "none"))
    rotation: float = _opt(0.05, "Random rotation, as a fraction of a full turn.")
    zoom: float = _opt(0.1, "Random zoom, as a fraction of the image size.")
    translation: float = _opt(0.1, "Random translation, as a fraction of the image size.")
    contrast: float = _opt(0.1, "Random contrast factor.")
    class_weights: bool = _opt(False, "Weight the loss by balanced class weights (for imbalanced data).")
    text_column: str = _opt("text", "Text data: the CSV column holding the text.")
    label_column: str = _opt("label", "Text data: the CSV column holding the label.")
    tasks: str = _opt("", "Label columns of a CSV manifest to learn, comma-separated, one head each (default: every "
                      "column but path and split); cells with labels separated by '|' make a multi-label task.")
    task_class_weights: str = _opt("", "Per-task class weights, overriding --class-weights: task=on|off,... "
                                   "(single-label tasks).")
    strict: bool = _opt(False, "Fail the run if any file cannot be read as an image (or lies outside the data "
                        "folder), instead of skipping it (or warning).")
    max_image_pixels: int = _opt(50_000_000, "Skip training images with more pixels than this (GIF: times its "
                                 "frames), read from the file header before decoding.", flag="max-train-pixels")
    dedupe: bool = _opt(False, "Drop byte-identical duplicate images before splitting (one copy kept; copies with "
                        "conflicting labels are all dropped); duplicates are reported either way.")
    tfds_data_dir: str = _opt("", "Folder where TensorFlow Datasets stores data (TFDS default if empty).")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = _opt(
        "mobilenet_v2_0.35",
        "Backbone: a Keras Applications name (see --list-backbones), 'hub:HANDLE' for a TF-Hub/Kaggle "
        "feature vector (URL or local SavedModel folder), or 'model:PATH' for a saved Keras model. Text: "
        "'hf:DIR_OR_REPO' for a BERT-family checkpoint, or 'hub:ENCODER' with --preprocessor.",
    )
    weights: str = _opt("imagenet", "Backbone weights: 'imagenet', 'none' (random init) or a path to a weights file "
                        "(text encoders: their checkpoint's weights unless 'none').")
    preprocessor: str = _opt("", "Text: 'hub:PREPROCESS', the TF-Hub preprocessing model of a 'hub:' BERT encoder "
                             "(hf: checkpoints tokenise with their own vocab.txt).")
    max_seq_length: int = _opt(128, "Text, hf: checkpoints: tokens per example, [CLS] and [SEP] included (longer "
                               "texts are cut; a hub: preprocessor applies its own).")
    pooling: str = _opt("auto", "Text: the encoder's 'pooled' output or the 'mean' of its token outputs; 'auto' "
                        "takes mean for sentence-transformers checkpoints, else pooled.",
                        choices=("auto", "pooled", "mean"))
    cut_layer: str = _opt(
        "", "For 'model:PATH' backbones: the layer whose output feeds the head (default: the last feature map).")
    preprocess: str = _opt(
        "auto",
        "Input preprocessing inside the model: 'auto' (the backbone's own), 'none' (raw 0-255), 'unit' "
        "(scale to [0, 1]) or a Keras Applications module name such as 'mobilenet_v2'.",
    )
    dropout: float = _opt(0.2, "Dropout rate before the classifier.")
    hidden_units: int = _opt(0, "Units of an optional hidden Dense layer in the head (0: none).")
    l2: float = _opt(0.0, "L2 weight decay on the head's Dense kernels.")
    label_smoothing: float = _opt(0.0, "Label smoothing for the cross-entropy loss.")
    task_weights: str = _opt("", "Loss weight per task with several heads: task=weight,... (default 1 each).")
    task_label_smoothing: str = _opt("", "Label smoothing per task, overriding --label-smoothing: task=value,...")


@dataclass(frozen=True)
class PhaseConfig:
    epochs: int = _opt(10, "Epochs in this phase (0 skips it).")
    learning_rate: float = _opt(1e-3, "Learning rate (Adam).")
    patience: int = _opt(3, "Early stopping patience in epochs on --monitor (0: off); best weights are restored.")


@dataclass(frozen=True)
class FrozenPhaseConfig(PhaseConfig):
    feature_cache: str = _opt(
        "auto",
        "Train phase 1's head on backbone features computed once and cached on disk: 'auto' (when phase 1 "
        "has more epochs than --feature-views), 'on' or 'off', or a folder for the cache (default: "
        "<TF_TRANSFER_CACHE or ~/.cache/tf_transfer>/features).", flag="feature-cache")
    feature_views: int = _opt(3, "With augmentation and the feature cache: augmented views cached per training "
                              "image; each epoch shows every image as one of them.", flag="feature-views")


@dataclass(frozen=True)
class FineTuneConfig(PhaseConfig):
    epochs: int = _opt(6, "Epochs in this phase (0 skips it).")
    learning_rate: float = _opt(0.0, "Peak learning rate of fine-tuning; 0 uses 0.3x phase 1's.")
    unfreeze: str = _opt(
        "60",
        "What to unfreeze: the top N layers of the backbone, 'all', or a layer/block name prefix "
        "(e.g. 'block_16') from which every layer above is unfrozen; a comma list (e.g. '20,60,all') "
        "unfreezes in stages, each continuing from the one before.",
        flag="unfreeze",
    )
    stage_epochs: str = _opt("", "With staged unfreezing: epochs per stage as a comma list (default: phase 2's "
                             "epochs split evenly, the remainder going to the last stages).", flag="stage-epochs")
    train_bn: bool = _opt(False, "Also train BatchNorm layers (otherwise they stay frozen, in inference mode).",
                         flag="train-bn")
    lr_decay: float = _opt(1.0, "Discriminative learning rates: each backbone block below the top trains at this "
                           "factor times the rate of the block above it (1: one rate for all).", flag="lr-decay")
    schedule: str = _opt("cosine", "Learning-rate schedule of each fine-tuning stage: constant, or cosine "
                         "(linear warm-up, then cosine decay to zero).", flag="schedule",
                         choices=("constant", "cosine"))
    warmup: float = _opt(0.1, "With --schedule cosine: share of each stage's steps spent warming up.", flag="warmup")
    weight_decay: float = _opt(0.0, "Decoupled weight decay (AdamW) in fine-tuning; 0 uses Adam.",
                               flag="weight-decay")


@dataclass(frozen=True)
class ExportConfig:
    export_dir: str = _opt("saved_models", "Root folder for SavedModel exports (<export_dir>/<name>/<version>/).")
    enabled: bool = _opt(True, "Export a SavedModel at the end of training.", flag="export")
    verify: bool = _opt(True, "Reload the export in a fresh process and check its predictions.", flag="verify-export")
    top_k: int = _opt(5, "How many best classes the serving signatures return as top_k_classes/top_k_scores.")
    max_image_pixels: int = _opt(50_000_000, "Serving refuses images with more pixels than this (read from the "
                                 "file header, before decoding).")
    tflite: str = _opt("", "Also write TFLite models: a comma list of float, dynamic, float16, int8 "
                       "(a bare --tflite means float).", const="float")
    tta: bool = _opt(False, "Serve test-time augmentation: average each image's scores with its horizontal flip "
                     "(doubles serving cost).", flag="export-tta")
    warmup_from_data: bool = _opt(False, "Use a few test (or training) images as the export's verification "
                                  "samples and TF Serving warm-up requests; by default they are generated images, "
                                  "so no training data leaves with the model.", flag="warmup-from-data")


@dataclass(frozen=True)
class EvalConfig:
    baseline: str = _opt("none", "Also train a baseline on the same splits and report it beside the transfer "
                         "model: 'scratch' (same architecture, data and epoch budget, all layers from random "
                         "initialisation) or, for text runs, 'tfidf' (TF-IDF of 1-2 grams + logistic regression).",
                         choices=("none", "scratch", "tfidf"))
    report: bool = _opt(True, "Write plots and report.html into the run folder.")
    top_k: int = _opt(5, "k of the top-k accuracy in the metrics.", flag="metrics-top-k")
    tta: bool = _opt(False, "Also evaluate with test-time augmentation (scores averaged with the horizontally "
                     "flipped image) and report what it changes.")


@dataclass(frozen=True)
class RuntimeConfig:
    strategy: str = _opt("auto", "tf.distribute strategy: auto picks TPU, multi-worker (TF_CONFIG), mirrored "
                         "(several GPUs) or the default, in that order.",
                         choices=("auto", "default", "mirrored", "multiworker", "tpu"))
    tpu: str = _opt("", "TPU address (grpc://...), name, or 'local' on a TPU VM; empty: from the environment.")
    precision: str = _opt("auto", "Compute precision: auto is mixed_bfloat16 on TPU, mixed_float16 on GPUs of "
                          "compute capability >= 7, float32 otherwise. The classifier output stays float32.",
                          choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"))
    jit_compile: bool = _opt(False, "Compile training steps with XLA.")
    steps_per_execution: int = _opt(1, "Training steps per tf.function call (raise it on TPUs).")
    save_every: int = _opt(0, "Also back up the training state every N steps (0: at every epoch end only).")


@dataclass(frozen=True)
class Config:
    name: str = _opt("classifier", "Name of the model: names the export folder and the run folder.")
    seed: int = _opt(42, "Random seed for splits, shuffling, augmentation and initialisation.")
    runs_dir: str = _opt("runs", "Root folder for run folders (<runs_dir>/<name>/<timestamp>/).")
    monitor: str = _opt("val_accuracy", "What early stopping, best checkpoints and the keep-the-best rule between "
                        "stages watch (ties are broken by the other one).", choices=("val_loss", "val_accuracy"))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    phase1: FrozenPhaseConfig = field(default_factory=FrozenPhaseConfig)
    phase2: FineTuneConfig = field(default_factory=FineTuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: str | Path) -> None:
        folders.write_text(path, self.to_json() + "\n")

    def replace(self, **changes: Any) -> Config:
        """A copy with top-level fields or dotted leaves ('phase1.epochs') changed."""
        return apply_overrides(self, changes)


def _field_type(cls: type, f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(cls)
    t = hints[f.name]
    if isinstance(t, types.UnionType):  # pragma: no cover - no unions today
        raise TypeError(f"unsupported config type {t}")
    return t


def _coerce(value: Any, t: type, where: str) -> Any:
    """Check a JSON value against a field type; ints are accepted for floats."""
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {t.__name__}, got {type(value).__name__} {value!r}")
    return value


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(fields)}"
        )
    kwargs = {}
    for key, value in data.items():
        f = fields[key]
        t = _field_type(cls, f)
        path = f"{where}.{key}" if where else key
        kwargs[key] = _from_dict(t, value, path) if dataclasses.is_dataclass(t) else _coerce(value, t, path)
    return validate(cls(**kwargs)) if cls is Config else cls(**kwargs)


def from_dict(data: dict) -> Config:
    """Build a Config from a (possibly partial) dict; unknown keys are an error."""
    return _from_dict(Config, data, "")


def load(path: str | Path) -> Config:
    """Read a Config from a JSON file; missing keys take their defaults, unknown keys are an error."""
    path = fs.path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def leaves(cls: type = Config, prefix: str = "") -> list[tuple[str, type, dataclasses.Field]]:
    """Every leaf field as (dotted path, type, field), in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        t = _field_type(cls, f)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(t):
            out.extend(leaves(t, path + "."))
        else:
            out.append((path, t, f))
    return out


def apply_overrides(config: Config, changes: dict[str, Any]) -> Config:
    """Return config with dotted-path leaves replaced, e.g. {'phase1.epochs': 3}."""
    data = config.to_dict()
    for path, value in changes.items():
        node = data
        *parents, last = path.split(".")
        for p in parents:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config key {path!r}")
            node = node[p]
        if last not in node:
            raise ConfigError(f"unknown config key {path!r}")
        node[last] = value
    return from_dict(data)


def validate(config: Config) -> Config:
    """Check value ranges; raise ConfigError naming the field, the expectation and the value."""
    d, m = config.data, config.model

    def check(ok: bool, field_name: str, expected: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{field_name}: expected {expected}, got {value!r}")

    check(bool(config.name) and "/" not in config.name and not config.name.startswith("."),
          "name", "a non-empty name without '/'", config.name)
    check(d.image_size == 0 or d.image_size >= 32, "data.image_size", "0 (backbone default) or >= 32", d.image_size)
    check(d.batch_size >= 1, "data.batch_size", "a positive integer", d.batch_size)
    for name in ("val_fraction", "test_fraction"):
        v = getattr(d, name)
        check(0.0 <= v < 1.0, f"data.{name}", "a fraction in [0, 1)", v)
    check(d.val_fraction + d.test_fraction < 1.0, "data.val_fraction + data.test_fraction", "less than 1",
          d.val_fraction + d.test_fraction)
    check(d.shuffle_buffer >= 1, "data.shuffle_buffer", "a positive integer", d.shuffle_buffer)
    check(d.max_image_pixels >= 1, "data.max_image_pixels", "a positive integer", d.max_image_pixels)
    for name in ("rotation", "zoom", "translation", "contrast"):
        v = getattr(d, name)
        check(0.0 <= v < 1.0, f"data.{name}", "a value in [0, 1)", v)
    check(0.0 <= m.dropout < 1.0, "model.dropout", "a rate in [0, 1)", m.dropout)
    check(m.hidden_units >= 0, "model.hidden_units", "0 or a positive integer", m.hidden_units)
    check(m.l2 >= 0.0, "model.l2", "a non-negative number", m.l2)
    check(0.0 <= m.label_smoothing < 1.0, "model.label_smoothing", "a value in [0, 1)", m.label_smoothing)
    check(m.max_seq_length >= 3, "model.max_seq_length", "at least 3 ([CLS], a token, [SEP])", m.max_seq_length)
    check(not m.preprocessor or m.preprocessor.startswith("hub:"), "model.preprocessor", "'hub:PREPROCESS' or empty",
          m.preprocessor)
    for phase in ("phase1", "phase2"):
        p = getattr(config, phase)
        check(p.epochs >= 0, f"{phase}.epochs", "0 or more", p.epochs)
        check(p.patience >= 0, f"{phase}.patience", "0 or more", p.patience)
    check(config.phase1.learning_rate > 0, "phase1.learning_rate", "a positive number", config.phase1.learning_rate)
    check(config.phase2.learning_rate >= 0, "phase2.learning_rate", "0 (auto) or a positive number",
          config.phase2.learning_rate)
    check(config.phase1.epochs + config.phase2.epochs > 0, "phase1.epochs + phase2.epochs", "at least one epoch",
          0)
    check(config.phase1.feature_views >= 1, "phase1.feature_views", "a positive integer", config.phase1.feature_views)
    check(bool(config.phase1.feature_cache.strip()), "phase1.feature_cache", "auto, on, off or a folder",
          config.phase1.feature_cache)
    for name, value in (("data.cache", d.cache), ("phase1.feature_cache", config.phase1.feature_cache)):
        check(not fs.is_url(value), name, "a local folder (caches are local; data, weights, runs and exports may "
              "be URLs)", value)
    check(config.evaluation.top_k >= 1, "evaluation.top_k", "a positive integer", config.evaluation.top_k)
    r = config.runtime
    check(r.steps_per_execution >= 1, "runtime.steps_per_execution", "a positive integer", r.steps_per_execution)
    check(r.save_every >= 0, "runtime.save_every", "0 or a positive number of steps", r.save_every)
    e = config.export
    check(e.top_k >= 1, "export.top_k", "a positive integer", e.top_k)
    check(e.max_image_pixels >= 1, "export.max_image_pixels", "a positive integer", e.max_image_pixels)
    bad = [v for v in e.tflite.split(",") if v and v not in TFLITE_VARIANTS]
    check(not bad, "export.tflite", f"a comma list of {', '.join(TFLITE_VARIANTS)}", e.tflite)
    _validate_fine_tuning(config.phase2, check)
    return config


def _validate_fine_tuning(p2, check) -> None:
    specs = [s.strip() for s in p2.unfreeze.split(",")]
    check(all(specs), "phase2.unfreeze", "a layer count, 'all', a layer name prefix, or a comma list of them",
          p2.unfreeze)
    for spec in specs:
        if spec.lstrip("-").isdigit():
            check(int(spec) >= 0, "phase2.unfreeze", "non-negative layer counts", p2.unfreeze)
    if p2.stage_epochs:
        parts = [s.strip() for s in p2.stage_epochs.split(",")]
        check(all(p.isdigit() for p in parts) and len(parts) == len(specs), "phase2.stage_epochs",
              f"{len(specs)} comma-separated epoch counts (one per --unfreeze stage)", p2.stage_epochs)
        check(sum(int(p) for p in parts if p.isdigit()) == p2.epochs, "phase2.stage_epochs",
              f"epochs that add up to --phase2-epochs {p2.epochs}", p2.stage_epochs)
    else:
        check(p2.epochs == 0 or p2.epochs >= len(specs), "phase2.epochs",
              f"at least one epoch per stage ({len(specs)} stages)", p2.epochs)
    check(0.0 < p2.lr_decay <= 1.0, "phase2.lr_decay", "a factor in (0, 1]", p2.lr_decay)
    check(0.0 <= p2.warmup < 1.0, "phase2.warmup", "a share of the steps in [0, 1)", p2.warmup)
    check(p2.weight_decay >= 0.0, "phase2.weight_decay", "a non-negative number", p2.weight_decay)
