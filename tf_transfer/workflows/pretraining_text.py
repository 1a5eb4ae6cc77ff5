"""Domain-adaptive pre-training of a text encoder: masked-language modelling (BERT's objective) on
unlabelled in-domain texts, continuing a BERT-family checkpoint (``hf:DIR``), then published in the TF-Hub
BERT contract (:func:`~tf_transfer.workflows.publishing_text.publish_text`) for ``train --backbone hub:``.

It is a normal run folder (config, versions, run.log, epochs.jsonl, state, metrics.json; resumable with
``--resume``), which also holds the adapted encoder as a Hugging Face checkpoint folder
(``hf_checkpoint/``). It reads the fine-tuning stage's settings (``--phase2-epochs``,
``--phase2-learning-rate``, ``--weight-decay``, ``--schedule``/``--warmup``), ``--batch-size``,
``--max-seq-length`` and ``--val-fraction`` (held-out texts for masked-token accuracy and perplexity,
measured before and after). It trains on one device (the strategy flags are for classifier runs).
"""

from __future__ import annotations

import hashlib
import logging
import math

from tf_transfer import config as config_lib
from tf_transfer.config import Config
from tf_transfer.errors import ConfigError, RunError
from tf_transfer.folders import RunDir

log = logging.getLogger(__name__)
METRICS = {"masked_loss": "masked-token loss", "masked_accuracy": "masked-token accuracy", "perplexity": "perplexity"}


def pretrain_mlm(config: Config, out: str, license: str = "unspecified", overwrite: bool = False,
                 resume_dir: str | None = None):
    """Adapt `config`'s encoder to `config.data.source`'s texts (or resume the run in `resume_dir`),
    then publish it to `out`; returns `out`."""
    from tf_transfer.workflows import publishing, publishing_text, recipe

    final = publishing.target(out, overwrite)  # refused before training, not after it
    if resume_dir is None:
        config = check_config(recipe.with_modality_defaults(config))
        run = RunDir.create(config.runs_dir, config.name)
    else:
        run = RunDir.existing(resume_dir)
        config = config_lib.load(run.config_file)
    with run.logging():
        recipe.record_versions(run)
        run.save_config(config)
        run.update_state(method="mlm")
        train_texts, val_texts = texts_of(config, run)
        model, backbone = build(config)
        metrics = adapt(model, config, run, train_texts, val_texts)
        write_checkpoint(model, backbone, run)
        src = publishing.Source(encoder_classifier(backbone), {"run": run.path.name},
                                _redacted(config), [], {"mlm": metrics}, "text", (val_texts or train_texts)[:8])
        return publishing_text.publish_text(src, final, license)


def check_config(config: Config) -> Config:
    if not config.model.backbone.startswith("hf:"):
        raise ConfigError(f"--method mlm continues a BERT-family checkpoint: expected --backbone hf:DIR, got "
                          f"{config.model.backbone!r} (a TF-Hub encoder does not expose its word embeddings)")
    if config.model.weights == "none":
        log.info("--weights none: the encoder starts from random initialisation (pre-training from scratch)")
    return config


def _redacted(config: Config) -> dict:
    from tf_transfer.serving import savedmodel

    return savedmodel.redact_paths(config.to_dict())


def texts_of(config: Config, run: RunDir) -> tuple[list[str], list[str]]:
    """The source's texts, labels ignored, split into training and held-out texts (seeded); a resumed
    run checks that they are the texts it started on."""
    import numpy as np

    from tf_transfer.data import texts

    found, skipped = texts.unlabelled_texts(config.data)
    if skipped:
        listing = "\n".join(f"  {where}: {why}" for where, why in list(skipped.items())[:20])
        log.warning("Skipped %d text(s):\n%s", len(skipped), listing)
    digest = hashlib.sha256("\0".join(found).encode("utf-8", "replace")).hexdigest()
    started = run.state().get("texts_digest")
    if started and started != digest:
        raise RunError(f"--data {config.data.source}: its texts changed since {run.location} started; resume on "
                       "the same texts, or start a new run")
    run.update_state(texts_digest=digest)
    order = np.random.default_rng(config.seed).permutation(len(found))
    held = round(len(found) * config.data.val_fraction) if len(found) > 1 else 0
    val = [found[i] for i in sorted(order[:held])]
    train = [found[i] for i in sorted(order[held:])]
    log.info("Masked-language modelling on %d texts (%d held out for masked-token accuracy and perplexity)",
             len(train), len(val))
    return train, val


def build(config: Config):
    """(the MaskedLanguageModel, its TextBackbone): the checkpoint's encoder and tokenizer, and its MLM
    head where the checkpoint has one (else a fresh transform layer; the output layer is the embeddings)."""
    import tensorflow as tf

    from tf_transfer._keras import keras
    from tf_transfer.models import mlm, text_backbones

    m = config.model
    keras.utils.set_random_seed(config.seed)
    backbone = text_backbones.build_hf(m.backbone[len("hf:"):], m.weights, m.max_seq_length, m.pooling)
    model = mlm.MaskedLanguageModel(backbone.preprocess, backbone.layer, backbone.cfg, config.seed, name="masked_lm")
    model(model.masked(tf.constant(["a"]), 0)[0])  # builds the head
    folder = text_backbones.hf_folder(m.backbone[len("hf:"):])
    head_found = m.weights != "none" and mlm.load_head(model.head, text_backbones.checkpoint_tensors(
        folder / text_backbones.HF_WEIGHTS))
    log.info("Backbone: %s; masked-language-model head %s, output layer tied to the word embeddings",
             backbone.description, "from the checkpoint" if head_found else "created (the checkpoint has none)")
    if not head_found and m.weights != "none":
        # bench_adapt measured a loss from adapting MiniLM, a checkpoint of this kind
        log.warning("A checkpoint without a masked-language-model head was usually trained for something else "
                    "(sentence-transformers: sentence embeddings), which adaptation can undo; fine-tune the "
                    "checkpoint itself too and keep the better model")
    return model, backbone


def adapt(model, config: Config, run: RunDir, train_texts: list[str], val_texts: list[str]) -> dict:
    """Fit (resuming a backup) unless the run has its final weights; the held-out scores before and after."""
    val = _dataset(val_texts, config) if val_texts else None
    if run.has_weights("final"):
        run.load_weights(model, "final")
        log.info("%s has finished adapting; publishing its encoder", run.location)
    else:
        before = run.state().get("mlm_before") or (_evaluate(model, val) if val else {})
        run.update_state(mlm_before=before)
        if before:
            log.info("Before adaptation, held-out texts: %s", _describe(before))
        _fit(model, config, run, _dataset(train_texts, config, shuffle=True), val, len(train_texts))
    metrics = run.read_json(RunDir.METRICS, {}).get("mlm")
    if not metrics:  # also when a stop came after the weights were saved
        after = _evaluate(model, val) if val else {}
        if after:
            log.info("After adaptation, held-out texts: %s", _describe(after))
        metrics = {"before": run.state().get("mlm_before", {}), "after": after, "train_texts": len(train_texts),
                   "val_texts": len(val_texts), "epochs": config.phase2.epochs}
        run.write_json(RunDir.METRICS, {"mlm": metrics})
    return metrics


def write_checkpoint(model, backbone, run: RunDir) -> None:
    """The adapted encoder as a Hugging Face checkpoint folder in the run (`--backbone hf:` reads it, as do
    other BERT tools), written whole or not at all."""
    from tf_transfer import folders
    from tf_transfer.models import text_backbones

    target = run.path / RunDir.HF_CHECKPOINT
    with folders.atomic_dir(target, replace=True) as tmp:
        text_backbones.save_hf(backbone.layer, model.head.cfg, backbone.preprocess.vocab, tmp,
                               backbone.preprocess.lower_case, mean_pooling=backbone.pooling == "mean")
    log.info("The adapted encoder as a checkpoint folder: %s (--backbone hf:%s)", target, target)


def _dataset(texts: list[str], config: Config, shuffle: bool = False):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(texts)
    if shuffle:
        ds = ds.shuffle(len(texts), seed=config.seed, reshuffle_each_iteration=True)
    return ds.batch(config.data.batch_size).prefetch(tf.data.AUTOTUNE)


def _evaluate(model, val) -> dict:
    _compile(model, 1e-3, 0.0)  # evaluate needs a compiled model; the optimizer is replaced by _fit's
    return {k: round(float(v), 5) for k, v in model.evaluate(val, verbose=0, return_dict=True).items()}


def _describe(scores: dict) -> str:
    return ", ".join(f"{label} {scores[k]:.4g}" for k, label in METRICS.items() if k in scores)


def _compile(model, learning_rate, weight_decay: float) -> None:
    from tf_transfer._keras import keras

    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["layer_norm", "bias"])  # BERT's practice
    model.compile(optimizer=optimizer)


def _fit(model, config: Config, run: RunDir, train, val, count: int) -> None:
    from tf_transfer._keras import keras
    from tf_transfer.training import callbacks as cb
    from tf_transfer.training.optimizers import WarmupCosine

    p = config.phase2
    steps = math.ceil(count / config.data.batch_size)
    total = steps * p.epochs
    lr = WarmupCosine(p.learning_rate, total, int(p.warmup * total)) if p.schedule == "cosine" else p.learning_rate
    _compile(model, lr, p.weight_decay)
    log.info("Adapting for %d epochs of %d steps (batch %d, peak learning rate %g, %s, weight decay %g)", p.epochs,
             steps, config.data.batch_size, p.learning_rate, p.schedule, p.weight_decay)
    backup = keras.callbacks.BackupAndRestore(str(run.backup_dir("mlm")))
    # the final weights are saved before BackupAndRestore deletes its backup: a stop never loses both
    callbacks = [cb.HistoryRecorder(run, 0, "mlm"), cb.StageFinisher(run, model, "mlm", "final", 0), backup,
                 cb.PreemptionSaver(backup), cb.ProgressLog("MLM", steps, METRICS)]
    with cb.quiet_batch_timing():
        model.fit(train, validation_data=val, epochs=p.epochs, callbacks=callbacks, verbose=0)


def encoder_classifier(backbone):
    """strings -> tokenizer -> encoder -> pooler: a classifier's layers without a head, which is what
    publishing a text encoder reads (its `preprocess`, `backbone` and `pooler` layers)."""
    import tensorflow as tf

    from tf_transfer._keras import keras
    from tf_transfer.models.text import TextPooler

    strings = keras.Input((), dtype=tf.string, name="text")
    encoded = backbone.preprocess(strings)
    pooled = TextPooler(backbone.pooling, name="pooler")(backbone.layer(encoded), encoded["input_mask"])
    return keras.Model(strings, pooled, name="encoder_classifier")


__all__ = ["pretrain_mlm"]
