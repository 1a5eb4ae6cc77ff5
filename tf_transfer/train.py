"""Train a classifier by transfer learning, in two phases, and export it.

    python -m tf_transfer.train --data FOLDER --backbone NAME --name NAME

Phase 1 trains the head on a frozen backbone; phase 2 unfreezes the top of the backbone and
continues at a lower learning rate. Every run gets a self-describing folder
(<runs_dir>/<name>/<timestamp>/): config, split manifest, data summary, skipped files, history,
metrics, TensorBoard logs, checkpoints and the export path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tf_transfer import cli, outputs
from tf_transfer import config as config_lib
from tf_transfer.config import Config
from tf_transfer.outputs import FINAL_WEIGHTS

log = logging.getLogger("tf_transfer.train")

PHASE1_WEIGHTS = "phase1_final.weights.h5"
PHASE1_METRICS = "phase1_metrics.json"


@dataclass
class RunResult:
    run_dir: Path
    config: Config
    metrics: dict
    history: list[dict]
    export_path: Path | None = None
    model: object = field(default=None, repr=False)
    class_names: list[str] = field(default_factory=list)
    trainable_params: dict[str, int] = field(default_factory=dict)  # per phase


def new_run_dir(config: Config) -> Path:
    root = Path(config.runs_dir) / config.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = root / stamp, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def latest_run_dir(config: Config) -> Path:
    root = Path(config.runs_dir) / config.name
    runs = sorted(p for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []
    if not runs:
        raise config_lib.ConfigError(f"--resume: no earlier run of {config.name!r} under {root}")
    return runs[-1]


def versions() -> dict:
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


def _save_weights(model, path: Path) -> None:
    """Save weights so that a kill leaves the previous file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name.replace(".weights.h5", ".partial.weights.h5"))  # same format
    model.save_weights(str(tmp))
    os.replace(tmp, path)


def fit_phase(model, phase: int, config: Config, train_ds, val_ds, run_dir: Path, initial_epoch: int,
               epochs: int, learning_rate: float, patience: int, class_weight, chief: bool = True) -> int:
    """Compile and fit one phase; returns the number of the last epoch run (1-based, cumulative)."""
    from tf_transfer import callbacks as cb
    from tf_transfer._keras import keras

    with model.distribute_strategy.scope():  # optimizer and metrics live with the model's variables
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.model.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=config.runtime.jit_compile,
            steps_per_execution=config.runtime.steps_per_execution,
        )
    monitor = "val_loss" if val_ds is not None else "loss"
    ckpt = run_dir / "checkpoints"
    save_freq = config.runtime.save_every or "epoch"
    # Keras' own callbacks write a non-chief worker's files to temporary places; ours skip them.
    backup = keras.callbacks.BackupAndRestore(str(ckpt / f"backup_phase{phase}"), save_freq=save_freq)
    callbacks = [
        *([cb.HistoryRecorder(run_dir, phase)] if chief else []),
        backup,
        cb.PreemptionSaver(backup),
        *([cb.StateRecorder(run_dir, phase)] if chief else []),
        keras.callbacks.ModelCheckpoint(str(ckpt / f"best_phase{phase}.weights.h5"), monitor=monitor,
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False, profile_batch=0),
    ]
    if patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=patience,
                                                       restore_best_weights=True, verbose=1))
    with cb.quiet_batch_timing():
        history = model.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch,
                            epochs=initial_epoch + epochs, callbacks=callbacks, class_weight=class_weight,
                            verbose=1 if sys.stdout.isatty() else 2)
    epochs_run = history.epoch
    return (epochs_run[-1] + 1) if epochs_run else initial_epoch


def _log_params(model, phase: str) -> int:
    from tf_transfer import model as model_lib

    trainable = model_lib.count_params(model.trainable_weights)
    total = model_lib.count_params(model.weights)
    log.info("%s: %s trainable of %s parameters", phase, f"{trainable:,}", f"{total:,}")
    return trainable


def run(config: Config, resume_dir: str | Path | None = None) -> RunResult:
    """Train (or resume) a run and export it; returns the run folder, metrics and export path."""
    from tf_transfer import distribute

    resuming = resume_dir is not None
    log_name = "run.log"
    if not resuming and distribute.choose(config.runtime.strategy, config.runtime.tpu) == "multiworker":
        # Every worker (and a restarted cluster) must agree on the folder: name it after the cluster.
        run_dir = Path(config.runs_dir) / config.name / f"cluster-{distribute.cluster_id()}"
        run_dir.mkdir(parents=True, exist_ok=True)
        resuming = (run_dir / "config.json").is_file() and (run_dir / data_manifest_name()).is_file()
        task = distribute.tf_config().get("task", {})
        if not distribute.task_is_chief(task, distribute.tf_config().get("cluster", {})):
            log_name = f"{task.get('type', 'worker')}-{task.get('index', 0)}.log"
    else:
        run_dir = Path(resume_dir) if resuming else new_run_dir(config)
    handler = cli.setup_logging(run_dir / log_name)
    try:
        return _run(config, run_dir, resuming)
    finally:
        logging.getLogger("tf_transfer").removeHandler(handler)
        handler.close()


def run_prepared(config: Config, run_dir: Path, images, strategy=None) -> RunResult:
    """A new run in run_dir on data already prepared (the tuner prepares the split once per search)."""
    handler = cli.setup_logging(run_dir / "run.log")
    try:
        return _run(config, run_dir, resuming=False, images=images, strategy=strategy)
    finally:
        logging.getLogger("tf_transfer").removeHandler(handler)
        handler.close()


def data_manifest_name() -> str:
    from tf_transfer import data

    return data.MANIFEST


def _run(config: Config, run_dir: Path, resuming: bool, images=None, strategy=None) -> RunResult:
    from tf_transfer import distribute
    from tf_transfer._keras import keras

    # Multi-worker and TPU strategies configure the runtime: create them before any other TF work.
    strategy = strategy or distribute.create(config.runtime.strategy, config.runtime.tpu)
    topo = distribute.topology(strategy)
    policy = distribute.precision_policy(config.runtime.precision, topo.kind)
    keras.mixed_precision.set_global_policy(policy)
    try:
        return _train(config, run_dir, resuming, images, strategy, topo, policy)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # no global state leaks into the next run


def head_on_features(model, config: Config, images, image_size: int, root: Path, batch_size: int, strategy):
    """Phase 1 on cached backbone features: the head (shared with `model`) and its train/val datasets."""
    from tf_transfer import features

    views = features.effective_views(config)
    shared = {"extract": features.extractor(model, image_size),
              "weights": features.weights_digest(model.get_layer("backbone"))}
    train = features.ensure(model, config, images, "train", image_size, root, views, batch_size, **shared)
    val = features.ensure(model, config, images, "val", image_size, root, 1, batch_size, **shared) \
        if images.splits["val"] else None
    with strategy.scope():
        head = features.head_model(model)
    log.info("Phase 1 trains the head on cached features (%d train vectors x %d view(s))", train.count, train.views)
    n = images.num_classes
    return (head, features.dataset(train, n, config.seed, config.data.shuffle_buffer, batch_size),
            features.dataset(val, n, config.seed, batch_size=batch_size) if val else None)


def _train(config: Config, run_dir: Path, resuming: bool, images, strategy, topo, policy: str) -> RunResult:
    from tf_transfer import backbones, data, distribute, features
    from tf_transfer import callbacks as cb
    from tf_transfer import model as model_lib
    from tf_transfer._keras import keras

    keras.utils.set_random_seed(config.seed)
    image_size = config.data.image_size or backbones.default_image_size(config.model.backbone)
    chief = topo.is_chief  # only the chief writes the run folder; other workers keep their files aside
    scratch_dir = run_dir if chief else run_dir / "workers" / f"worker-{topo.worker_index}"
    distribute.check_tpu_paths(topo.kind, config.runtime.tpu, {
        "--data": config.data.source.removeprefix("csv:") if not config.data.source.startswith("tfds:") else "",
        "--backbone": config.model.backbone.split(":", 1)[1] if ":" in config.model.backbone else "",
        "--weights": config.model.weights if config.model.weights not in ("imagenet", "none") else ""})

    if resuming:
        state = cb.read_state(run_dir)
        log.info("Resuming run %s (phase %s, after epoch %s)", run_dir, state.get("phase", 1),
                 state.get("last_epoch", 0))
        images = data.load_manifest(run_dir)
    else:
        state = {}
        images = images or data.prepare(config.data, config.seed)
        if chief:
            config.save(run_dir / "config.json")
            (run_dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
            images.write(run_dir)
        log.info("Run folder: %s", run_dir)
    log.info("Data: %s (%d classes)\n%s", images.source, images.num_classes, images.summary_table())
    if images.skipped:
        shown = sorted(images.skipped.items())[:10]
        log.warning("Skipped %d unreadable file(s) (all listed in %s):\n%s", len(images.skipped),
                     run_dir / data.SKIPPED, "\n".join(f"  {p}: {r}" for p, r in shown))

    global_batch = config.data.batch_size * topo.replicas
    shard = (topo.workers, topo.worker_index) if topo.workers > 1 else None
    log.info("Strategy: %s, %d replica(s) on %d worker(s); global batch %d (%d per replica); precision %s%s",
             topo.kind, topo.replicas, topo.workers, global_batch, config.data.batch_size, policy,
             "; XLA" if config.runtime.jit_compile else "")
    if shard:
        how = (f"by data (every worker reads all TFDS records and keeps 1/{topo.workers})" if images.kind == "tfds"
               else f"by file (each of the {topo.workers} workers reads 1/{topo.workers} of the image files)")
        log.info("Input sharding: %s", how)
    train_ds = data.pipeline(images, "train", config.data, image_size, config.seed, training=True,
                             batch_size=global_batch, shard=shard)
    val_ds = data.pipeline(images, "val", config.data, image_size, config.seed, batch_size=global_batch) \
        if images.splits["val"] else None
    test_ds = data.pipeline(images, "test", config.data, image_size, config.seed, batch_size=global_batch) \
        if images.splits["test"] else None
    class_weight = images.class_weights() if config.data.class_weights else None

    trainable: dict[str, int] = {}
    with strategy.scope():
        bb = backbones.build(config.model.backbone, config.model.weights, image_size,
                             config.model.cut_layer, config.model.preprocess)
        log.info("Backbone: %s, input %dx%d, preprocessing %r", bb.description, image_size, image_size, bb.preprocess)
        model = model_lib.build_classifier(bb, images.num_classes, config.model, train_bn=config.phase2.train_bn)
        if config.model.weights == "none" and config.phase2.train_bn:
            # From random init the BatchNorm statistics must be learned within this run; ImageNet models'
            # momentum (0.99-0.999) would leave the moving averages near their initial values after a
            # few hundred steps, and inference would then see unnormalised activations.
            model_lib.set_batchnorm_momentum(model, 0.9)

    phase1_weights = run_dir / "checkpoints" / PHASE1_WEIGHTS
    epoch = 0
    if state.get("phase1_done"):
        model.load_weights(str(phase1_weights))
        epoch = state["phase1_epochs"]
        log.info("Phase 1 finished earlier (%d epochs); continuing with phase 2", epoch)
    else:
        with strategy.scope():
            model_lib.freeze_backbone(model)
        trainable["phase1"] = _log_params(model, "Phase 1 (backbone frozen)")
        if config.phase1.epochs:
            fit_model, fit_train, fit_val = model, train_ds, val_ds
            root = features.plan(config, topo.workers, topo.kind)
            if root is not None:
                fit_model, fit_train, fit_val = head_on_features(model, config, images, image_size, root, global_batch,
                                                             strategy)
            epoch = fit_phase(fit_model, 1, config, fit_train, fit_val, run_dir, 0, config.phase1.epochs,
                               config.phase1.learning_rate, config.phase1.patience, class_weight, chief)
        _save_weights(model, phase1_weights if chief else scratch_dir / PHASE1_WEIGHTS)
        if config.phase1.epochs and config.phase2.epochs:  # phase 1 alone, to show what fine-tuning adds
            phase1_metrics = outputs.evaluate_splits(model, {"val": val_ds, "test": test_ds}, images.class_names,
                                                     config)
            if chief:
                cb.write_json_atomic(run_dir / PHASE1_METRICS, phase1_metrics)
        state = {**cb.read_state(run_dir), "phase1_done": True, "phase1_epochs": epoch}
        if chief:
            cb.write_json_atomic(run_dir / cb.STATE, state)

    if config.phase2.epochs:
        with strategy.scope():
            unfrozen = model_lib.unfreeze_top(model, config.phase2.unfreeze, config.phase2.train_bn)
        log.info("Phase 2: --unfreeze %s unfroze %d backbone layers with weights (from %s up); BatchNorm %s",
                 config.phase2.unfreeze, len(unfrozen), unfrozen[0] if unfrozen else "-",
                 "trains" if config.phase2.train_bn else "stays frozen")
        trainable["phase2"] = _log_params(model, "Phase 2 (fine-tuning)")
        epoch = fit_phase(model, 2, config, train_ds, val_ds, run_dir, epoch, config.phase2.epochs,
                           config.phase2_learning_rate, config.phase2.patience, class_weight, chief)

    final_weights = run_dir / "checkpoints" / FINAL_WEIGHTS
    _save_weights(model, final_weights if chief else scratch_dir / FINAL_WEIGHTS)
    history = cb.read_history(run_dir)
    boundary = state.get("phase1_epochs", 0)
    if not chief:  # a worker's job ends with training; the chief evaluates, exports and reports
        log.info("Worker %d finished training; the chief writes metrics and the export", topo.worker_index)
        return RunResult(scratch_dir, config, {}, history, None, model, images.class_names, trainable)
    if topo.workers > 1:  # evaluate and export a plain copy: the cluster's variables need every worker
        model = outputs.rebuild(config, images.num_classes, image_size, final_weights)
    (run_dir / "history.json").write_text(json.dumps({"phase_boundary": boundary, "epochs": history}, indent=2) + "\n")

    predictions: dict = {}
    metrics = outputs.evaluate_splits(model, {"val": val_ds, "test": test_ds}, images.class_names, config,
                                      predictions)
    if (run_dir / PHASE1_METRICS).is_file():
        metrics["phase1"] = json.loads((run_dir / PHASE1_METRICS).read_text())
    if config.evaluation.baseline == "scratch":
        metrics["baseline_scratch"] = _scratch_baseline(config, run_dir, images)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    outputs.log_metrics(metrics)

    export_path = outputs.export_model(config, run_dir, model, images, metrics, image_size, bb.preprocess) \
        if config.export.enabled else None
    if config.evaluation.report:
        outputs.write_report(config, run_dir, images, metrics, history, boundary, test_ds or val_ds, predictions,
                      export_path)
    log.info("Run folder: %s", run_dir)
    return RunResult(run_dir, config, metrics, history, export_path, model, images.class_names, trainable)


def _scratch_baseline(config: Config, run_dir: Path, images) -> dict:
    """Train the same architecture from random initialisation, all layers, same data and epoch budget."""
    if config.model.backbone.startswith(("hub:", "model:")):
        log.warning("--baseline scratch needs a Keras Applications backbone (it re-initialises the weights); skipped")
        return {}
    budget = config.phase1.epochs + config.phase2.epochs
    scratch = config.replace(**{
        "model.weights": "none", "phase1.epochs": 0, "phase2.epochs": budget, "phase2.unfreeze": "all",
        "phase2.train_bn": True, "phase2.learning_rate": config.phase1.learning_rate,
        "phase2.patience": max(config.phase1.patience, config.phase2.patience),
        "export.enabled": False, "evaluation.baseline": "none", "evaluation.report": False})
    folder = run_dir / "baseline_scratch"
    folder.mkdir(exist_ok=True)
    log.info("Baseline: the same model from random initialisation, all layers trained, %d epochs (in %s)",
             budget, folder)
    result = _run(scratch, folder, resuming=False, images=images)
    return {k: v for k, v in result.metrics.items() if k in ("val", "test")}


def strategy_for(config: Config):
    """The tf.distribute strategy a run of this config uses (see tf_transfer.distribute)."""
    from tf_transfer import distribute

    return distribute.create(config.runtime.strategy, config.runtime.tpu)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tf_transfer.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="JSON config file (as saved in every run); flags override it")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                        help="continue an interrupted run: its folder, or the latest run of --name")
    parser.add_argument("--list-backbones", action="store_true", help="list the registered backbones and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    cli.add_config_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = cli.config_from_args(args)
    except config_lib.ConfigError as e:
        cli.fail(str(e))
    if args.print_config:
        print(config.to_json())
        return 0
    cli.quiet_tensorflow()
    cli.setup_logging()
    if args.list_backbones:
        from tf_transfer import backbones

        for name in backbones.names():
            spec = backbones.REGISTRY[name]
            print(f"{name:32s} {spec.image_size:4d}px  preprocess={spec.family}")
        return 0
    resume_dir = None
    given = [path for path, _, _ in config_lib.leaves() if hasattr(args, path) and path not in ("name", "runs_dir")]
    if args.resume and (given or args.config):
        cli.fail("--resume continues a run with its saved config; drop --config and the other flags "
                 f"(got {', '.join(given) or '--config'})")
    if args.resume:
        resume_dir = latest_run_dir(config) if args.resume == "latest" else Path(args.resume)
        if not (resume_dir / "config.json").is_file():
            cli.fail(f"--resume {args.resume}: {resume_dir} is not a run folder (no config.json)")
        config = config_lib.load(resume_dir / "config.json")
    from tf_transfer.backbones import BackboneError
    from tf_transfer.callbacks import Preempted
    from tf_transfer.data import DataError
    from tf_transfer.distribute import DistributeError
    from tf_transfer.export import ExportError

    try:
        run(config, resume_dir)
    except (DataError, BackboneError, ExportError, DistributeError, config_lib.ConfigError) as e:
        log.error("error: %s", e)
        return 2
    except Preempted as e:
        log.warning("Pre-empted. %s; continue with: python -m tf_transfer.train --resume --name %s --runs-dir %s",
                    e, config.name, config.runs_dir)
        return 143  # 128 + SIGTERM, as if the signal had ended the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
