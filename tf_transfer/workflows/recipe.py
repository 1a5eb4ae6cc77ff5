"""The transfer-learning recipe, and the run around it.

:func:`fine_tune` is the method on one screen: the data split, the model with its heads, phase 1 on
the frozen backbone, phase 2 fine-tuning the top of it, then metrics, export and report. What an
example is (the modality: images or texts) and which heads sit on the backbone (from the data's tasks)
are its inputs; resuming, the feature cache and the multi-worker file rules live in the objects it
calls (:class:`~tf_transfer.folders.RunDir`, :class:`~tf_transfer.training.trainer.Trainer`,
:class:`~tf_transfer.workflows.outputs.Outputs`).
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

from tf_transfer.config import Config
from tf_transfer.errors import ConfigError, RunError
from tf_transfer.folders import RunDir
from tf_transfer.training import distribute, phases
from tf_transfer.training.distribute import Session
from tf_transfer.training.trainer import Trainer
from tf_transfer.workflows.images import Images
from tf_transfer.workflows.outputs import Outputs, RunResult

log = logging.getLogger(__name__)

__all__ = ["RunResult", "fine_tune", "run", "run_prepared"]


def fine_tune(config: Config, run: RunDir, session: Session, modality: Images) -> RunResult:
    """Train a classifier by transfer learning, in two phases, and export it (resumable at every step)."""
    from tf_transfer._keras import keras

    keras.utils.set_random_seed(config.seed)
    modality.check_paths(session)
    data = modality.data(run)                         # the split: prepared and saved, or the saved one
    splits = modality.splits(data, session)           # train / val / test tf.data pipelines
    model = modality.build_model(modality.heads(data), session)  # raw inputs in, probabilities out
    trainer = Trainer(config, run, model, splits.train, splits.val, modality.class_weight(data),
                      frozen_inputs=lambda: modality.cached_features(model, data, session))
    outputs = Outputs(config, run, modality, data, splits, baseline=_baseline(config, run, session, modality))
    trainer.run_stages(phases.stages(config), after=outputs.after_stage)  # phase 1 frozen, then fine-tuning
    return outputs.finish(trainer, session)           # metrics, baseline, export, report


def run(config: Config, resume_dir: str | Path | None = None) -> RunResult:
    """Train a new run of `config` (or resume the run in `resume_dir`); returns its results."""
    config = with_modality_defaults(config)
    check_baseline(config)
    with distribute.session(config) as session:
        run_dir = _run_dir(config, resume_dir, session)
        with run_dir.logging():
            record_versions(run_dir)
            return fine_tune(config, run_dir, session, modality_for(config))


def run_prepared(config: Config, run_dir: str | Path, images, strategy=None) -> RunResult:
    """A new run in run_dir on data already split (the tuner prepares the split once per search)."""
    run_dir = RunDir(run_dir)
    with distribute.session(config, strategy) as session, run_dir.logging():
        return fine_tune(config, run_dir, session, modality_for(config, images))


def with_modality_defaults(config: Config) -> Config:
    """The config with its modality's defaults where flags were left at theirs (text: BERT fine-tuning)."""
    from tf_transfer.workflows.texts import is_text, text_defaults

    return text_defaults(config) if is_text(config) else config


def check_baseline(config: Config) -> None:
    """--baseline tfidf is for texts: refused for an image run before anything starts."""
    from tf_transfer.workflows.texts import is_text

    if config.evaluation.baseline == "tfidf" and not is_text(config):
        raise ConfigError("--baseline tfidf is a text baseline (TF-IDF + logistic regression); an image run "
                          "compares with --baseline scratch")


def modality_for(config: Config, prepared=None) -> Images:
    """What an example is for this config: texts when the backbone is a text encoder, else images."""
    from tf_transfer.workflows.texts import Texts, is_text

    return (Texts if is_text(config) else Images)(config, prepared)


def _run_dir(config: Config, resume_dir: str | Path | None, session: Session) -> RunDir:
    """The run folder: the one to resume, the one a multi-worker cluster agrees on, or a new one."""
    topo = session.topology
    if resume_dir is not None:
        return RunDir(resume_dir, topo.is_chief, topo.worker_index)
    if topo.workers == 1:
        return RunDir.create(config.runs_dir, config.name)
    # Every worker (and a restarted cluster) must agree on the folder: name it after the cluster.
    run = RunDir.for_cluster(config.runs_dir, config.name, distribute.cluster_id(), topo.is_chief, topo.worker_index)
    if run.started():
        saved = json.loads(run.config_file.read_text())
        if saved != config.to_dict():
            changed = sorted(k for k in config.to_dict() if saved.get(k) != config.to_dict()[k])
            raise RunError(f"{run.location} holds an earlier run of this cluster with a different config (differs in: "
                           f"{', '.join(changed)}); pass a new --name, or delete that folder to start over")
        log.info("Continuing the run of this cluster in %s", run.location)
    return run


def record_versions(run: RunDir) -> None:
    """versions.json, written once per run folder."""
    if not (run.path / RunDir.VERSIONS).is_file():
        run.write_json(RunDir.VERSIONS, versions())


def versions() -> dict:
    """The versions of everything a run depends on (saved as versions.json in every run)."""
    import tensorflow as tf

    from tf_transfer import __version__
    from tf_transfer._keras import keras

    out = {"tf_transfer": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
           "tf_keras": keras.__version__}
    try:
        import tensorflow_hub as hub

        out["tensorflow_hub"] = hub.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def scratch_config(config: Config) -> Config:
    """The same architecture from random initialisation, all layers trained, same data and epoch budget."""
    return config.replace(**{
        "model.weights": "none", "phase1.epochs": 0, "phase2.epochs": config.phase1.epochs + config.phase2.epochs,
        "phase2.unfreeze": "all", "phase2.train_bn": True, "phase2.learning_rate": config.phase1.learning_rate,
        "phase2.patience": max(config.phase1.patience, config.phase2.patience),
        "export.enabled": False, "evaluation.baseline": "none", "evaluation.report": False})


def _baseline(config: Config, run: RunDir, session: Session, modality: Images):
    """With --baseline: a function that trains the baseline on the run's data (scratch: in the run's own
    strategy) and returns its val/test metrics; checked before any training."""
    if config.evaluation.baseline == "tfidf":
        from tf_transfer.workflows.texts import tfidf_baseline

        return lambda data: tfidf_baseline(config, data)
    if config.evaluation.baseline != "scratch":
        return None

    def train_baseline(data) -> dict:
        if config.model.backbone.startswith(("hub:", "model:")):
            log.warning("--baseline scratch needs a Keras Applications backbone (it re-initialises the weights); "
                        "skipped")
            return {}
        scratch, folder = scratch_config(config), run.baseline()
        log.info("Baseline: the same model from random initialisation, all layers trained, %d epochs (in %s)",
                 scratch.phase2.epochs, folder.path)
        with folder.logging():
            result = fine_tune(scratch, folder, session, type(modality)(scratch, prepared=data))
        return {k: v for k, v in result.metrics.items() if k in ("val", "test")}

    return train_baseline
