"""Runs the recipe's stages on a model: freezing, compiling, fitting with the run's callbacks, keeping
the best weights so far, and resuming.

A stage that finished earlier (recorded in the run folder's state) is never run again: its weights are
loaded instead, so ``--resume`` is idempotent. After each stage the model is scored on the validation
split; a stage that does not beat the best weights so far (on ``--monitor``) is rolled back to them,
and the log and the run's history say so. Fine-tuning can therefore never leave the model worse on
validation than the frozen phase did.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tf_transfer.config import Config
from tf_transfer.folders import RunDir
from tf_transfer.models import classifier
from tf_transfer.training import callbacks as cb
from tf_transfer.training import phases
from tf_transfer.training.phases import Stage

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What one stage fits: a model (the classifier, or its head on cached features) and its data."""

    model: object
    train: object
    val: object | None


class Trainer:
    """Fits the stages of one run in order and keeps track of the epoch count across them."""

    def __init__(self, config: Config, run: RunDir, model, train, val, class_weight: dict | None = None,
                 frozen_inputs: Callable[[], Inputs | None] | None = None):
        self.config, self.run, self.model = config, run, model
        self.train, self.val, self.class_weight = train, val, class_weight
        self.frozen_inputs = frozen_inputs  # e.g. the head on cached features (None: live images)
        self.epoch = 0
        self.trainable_params: dict[str, int] = {}
        self.stages: list[dict] = []  # per stage run so far: name, phase, epochs, its score, what was kept
        self.best = run.state().get("best")  # {"stage", "weights", "metric", "value"} (kept in memory too:
        # every worker of a cluster decides alike, without waiting for the chief's state file)

    def run_stages(self, stages: list[Stage], after: Callable[[Stage, object], None] | None = None) -> None:
        """Run every stage; `after(stage, model)` is called once a stage is finished (not again on resume)."""
        for i, stage in enumerate(stages):
            weights = "final" if i == len(stages) - 1 else f"{stage.name}_final"
            self.run_stage(stage, weights)
            if after and not self.run.done(f"{stage.name}_after"):
                after(stage, self.model)
                self.run.mark_done(f"{stage.name}_after")

    def run_stage(self, stage: Stage, weights: str) -> None:
        first = self.epoch + 1
        finished = self.run.done(stage.name)
        if finished is not None and self.run.has_weights(weights):
            self.run.load_weights(self.model, weights)
            self.epoch, record = int(finished["epoch"]), finished
            log.info("%s finished earlier (%d epochs); continuing", stage.describe().capitalize(), self.epoch)
        else:
            fitted = self.run.done(f"{stage.name}.fit")
            if fitted is not None and self.run.has_weights(weights):  # killed between the fit and its scoring
                self.run.load_weights(self.model, weights)
                self.epoch = int(fitted)
            else:
                self._fit_stage(stage, weights)
            record = {"epoch": self.epoch, **self._keep_best(stage, weights)}
            self.run.mark_done(stage.name, record)
        self.stages.append({"name": stage.name, "phase": stage.phase, "unfreeze": stage.unfreeze,
                            "first_epoch": first, "last_epoch": self.epoch,
                            **{k: v for k, v in record.items() if k != "epoch"}})

    def _fit_stage(self, stage: Stage, weights: str) -> None:
        self._prepare(stage)
        if stage.epochs:
            inputs = (self.frozen_inputs() if stage.frozen and self.frozen_inputs else None) \
                or Inputs(self.model, self.train, self.val)
            self.epoch = self.fit(stage, inputs, finish=weights)  # saves the weights as the fit ends
        else:
            self.run.save_weights(self.model, weights)
            self.run.mark_done(f"{stage.name}.fit", self.epoch)

    def _prepare(self, stage: Stage) -> None:
        """Freeze or unfreeze the backbone for a stage, and log what trains."""
        with self.model.distribute_strategy.scope():
            if stage.frozen:
                classifier.freeze_backbone(self.model)
            else:
                unfrozen = classifier.unfreeze_top(self.model, stage.unfreeze, stage.train_bn)
                log.info("%s: unfroze %d backbone layers with weights (from %s up); BatchNorm %s",
                         stage.describe().capitalize(), len(unfrozen), unfrozen[0] if unfrozen else "-",
                         "trains" if stage.train_bn else "stays frozen")
        trainable = classifier.count_params(self.model.trainable_weights)
        total = classifier.count_params(self.model.weights)
        what = "backbone frozen" if stage.frozen else "fine-tuning"
        log.info("Phase %d (%s): %s trainable of %s parameters", stage.phase, what, f"{trainable:,}", f"{total:,}")
        self.trainable_params[stage.name] = trainable

    def fit(self, stage: Stage, inputs: Inputs, finish: str | None = None) -> int:
        """Compile and fit; returns the number of the last epoch run (1-based, counted across stages).
        With `finish`, the model's weights are saved under that name as the fit completes."""
        steps = _steps_per_epoch(inputs.train)
        phases.compile_for(inputs.model, stage, self.config, steps, backbone_model=self.model)
        callbacks = self._callbacks(stage, inputs.val is not None)
        if finish:
            callbacks.insert(1 if stage.patience else 0,
                             cb.StageFinisher(self.run, self.model, f"{stage.name}.fit", finish, self.epoch))
        with cb.quiet_batch_timing():
            history = inputs.model.fit(
                inputs.train, validation_data=inputs.val, initial_epoch=self.epoch,
                epochs=self.epoch + stage.epochs, callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2,
                class_weight=self.class_weight)
        return (history.epoch[-1] + 1) if history.epoch else self.epoch

    def _callbacks(self, stage: Stage, has_validation: bool) -> list:
        from tf_transfer._keras import keras

        monitor, mode = phases.monitor(self.config, has_validation)
        save_freq = self.config.runtime.save_every or "epoch"
        # Keras' own callbacks write a non-chief worker's files to temporary places; ours skip them.
        backup = keras.callbacks.BackupAndRestore(str(self.run.backup_dir(stage.name)), save_freq=save_freq)
        # Order matters at the end of training: EarlyStopping restores the best weights, then the stage is
        # saved (see fit), then BackupAndRestore deletes its backup.
        early = [keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=stage.patience,
                                               restore_best_weights=True, verbose=1)] if stage.patience else []
        heads = [t.head for t in classifier.model_tasks(self.model)]
        means = [cb.TaskMeans(heads)] if len(heads) > 1 or heads[0] != "head" else []
        return [
            *means,
            *early,
            cb.HistoryRecorder(self.run, stage.phase, stage.name),
            backup,
            cb.PreemptionSaver(backup),
            cb.StateRecorder(self.run, stage.phase),
            keras.callbacks.ModelCheckpoint(str(self.run.best_weights_file(stage.name)), monitor=monitor, mode=mode,
                                            save_best_only=True, save_weights_only=True),
            keras.callbacks.TensorBoard(str(self.run.tensorboard_dir), write_graph=False, profile_batch=0),
        ]

    def _keep_best(self, stage: Stage, weights: str) -> dict:
        """Score the stage on the validation split; roll back to the best weights so far if it did not
        beat them. Returns what the run's history records about it."""
        if self.val is None or (stage.epochs == 0 and self.best is None):
            return {}  # nothing to compare with, or nothing trained yet (a skipped phase 1 is not a baseline)
        metric, _ = phases.monitor(self.config, True)
        scores = self.score()
        value, best = scores[metric], self.best
        if best is None or _better(scores, best.get("scores", {metric: best["value"]}), metric):
            self.best = {"stage": stage.name, "weights": weights, "metric": metric, "value": value, "scores": scores}
            self.run.update_state(best=self.best)
            return {"score": value, "metric": metric, "kept": True}
        log.warning("%s did not beat %s on %s (%.4f against %.4f): keeping the weights of %s",
                    stage.describe().capitalize(), best["stage"], metric, value, best["value"], best["stage"])
        self.run.load_weights(self.model, best["weights"])
        self.run.save_weights(self.model, weights)
        return {"score": value, "metric": metric, "kept": False, "rolled_back_to": best["stage"]}

    def score(self) -> dict[str, float]:
        """The model's val_loss and val_accuracy, from one pass over the validation split. With several
        heads: the weighted sum of the heads' mean losses and the mean of their accuracies, each over the
        examples labelled for that head."""
        from tf_transfer._keras import keras

        tasks = classifier.model_tasks(self.model)
        loss_fns = phases.losses(self.config, tasks, reduction="none")
        weights = phases.loss_weights(self.config, tasks)
        total, correct, count = (dict.fromkeys(loss_fns, 0.0) for _ in range(3))
        for batch in self.val:
            x, y, w = keras.utils.unpack_x_y_sample_weight(batch)
            p = self.model(x, training=False)
            ys, ps, ws = (y, p, w) if isinstance(p, dict) else ({tasks[0].head: y}, {tasks[0].head: p}, None)
            for t in tasks:
                yt, pt = ys[t.head].numpy(), ps[t.head].numpy()
                mask = ws[t.head].numpy() > 0 if ws else np.ones(len(yt), bool)
                total[t.head] += float(np.sum(loss_fns[t.head](yt, pt).numpy()[mask]))
                hits = (pt > 0.5) == (yt > 0.5) if t.multi_label else \
                    np.argmax(pt, -1)[:, None] == np.argmax(yt, -1)[:, None]
                correct[t.head] += float(np.sum(np.mean(hits, axis=-1)[mask]))
                count[t.head] += int(np.sum(mask))
        n = {h: max(c, 1) for h, c in count.items()}
        return {"val_accuracy": float(np.mean([correct[h] / n[h] for h in n])),
                "val_loss": float(sum(weights[h] * total[h] / n[h] for h in n))}


def _better(scores: dict, best: dict, metric: str) -> bool:
    """Whether `scores` beat `best` on `metric`; a tie is decided by the other metric (accuracy ties are
    common on small validation splits)."""
    def key(s: dict, name: str) -> float:
        return s.get(name, float("nan")) * (1 if name.endswith("accuracy") else -1)  # higher is better

    other = "val_loss" if metric == "val_accuracy" else "val_accuracy"
    if key(scores, metric) != key(best, metric):
        return key(scores, metric) > key(best, metric)
    return other in best and key(scores, other) > key(best, other)


def _steps_per_epoch(dataset) -> int | None:
    import tensorflow as tf

    steps = int(tf.data.experimental.cardinality(dataset))
    return steps if steps > 0 else None
