"""Runs the recipe's stages on a model: freezing, compiling, fitting with the run's callbacks, and
resuming. A stage that finished earlier (recorded in the run folder's state) is never run again: its
weights are loaded instead, so ``--resume`` is idempotent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

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
        self.stages: list[dict] = []  # {"name", "phase", "first_epoch", "last_epoch"} per stage run so far

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
            self.epoch = int(finished)
            log.info("Phase %d finished earlier (%d epochs); continuing", stage.phase, self.epoch)
        else:
            self._prepare(stage)
            if stage.epochs:
                inputs = (self.frozen_inputs() if stage.frozen and self.frozen_inputs else None) \
                    or Inputs(self.model, self.train, self.val)
                self.epoch = self.fit(stage, inputs, finish=weights)  # saves and marks the stage itself
            else:
                self.run.save_weights(self.model, weights)
                self.run.mark_done(stage.name, self.epoch)
        self.stages.append({"name": stage.name, "phase": stage.phase, "first_epoch": first,
                            "last_epoch": self.epoch})

    def _prepare(self, stage: Stage) -> None:
        """Freeze or unfreeze the backbone for a stage, and log what trains."""
        with self.model.distribute_strategy.scope():
            if stage.frozen:
                classifier.freeze_backbone(self.model)
                what = "backbone frozen"
            else:
                unfrozen = classifier.unfreeze_top(self.model, stage.unfreeze, stage.train_bn)
                log.info("Phase %d: --unfreeze %s unfroze %d backbone layers with weights (from %s up); BatchNorm %s",
                         stage.phase, stage.unfreeze, len(unfrozen), unfrozen[0] if unfrozen else "-",
                         "trains" if stage.train_bn else "stays frozen")
                what = "fine-tuning"
        trainable = classifier.count_params(self.model.trainable_weights)
        total = classifier.count_params(self.model.weights)
        log.info("Phase %d (%s): %s trainable of %s parameters", stage.phase, what, f"{trainable:,}", f"{total:,}")
        self.trainable_params[stage.name] = trainable

    def fit(self, stage: Stage, inputs: Inputs, finish: str | None = None) -> int:
        """Compile and fit; returns the number of the last epoch run (1-based, counted across stages).
        With `finish`, the model's weights are saved under that name and the stage marked done as the
        fit completes."""
        phases.compile_for(inputs.model, stage, self.config)
        callbacks = self._callbacks(stage, inputs.val is not None)
        if finish:
            callbacks.insert(1 if stage.patience else 0,
                             cb.StageFinisher(self.run, self.model, stage.name, finish, self.epoch))
        with cb.quiet_batch_timing():
            history = inputs.model.fit(
                inputs.train, validation_data=inputs.val, initial_epoch=self.epoch,
                epochs=self.epoch + stage.epochs, callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2,
                class_weight=self.class_weight)
        return (history.epoch[-1] + 1) if history.epoch else self.epoch

    def _callbacks(self, stage: Stage, has_validation: bool) -> list:
        from tf_transfer._keras import keras

        monitor = phases.monitor(has_validation)
        save_freq = self.config.runtime.save_every or "epoch"
        # Keras' own callbacks write a non-chief worker's files to temporary places; ours skip them.
        backup = keras.callbacks.BackupAndRestore(str(self.run.backup_dir(stage.phase)), save_freq=save_freq)
        # Order matters at the end of training: EarlyStopping restores the best weights, then the stage is
        # saved (see fit), then BackupAndRestore deletes its backup.
        early = [keras.callbacks.EarlyStopping(monitor=monitor, patience=stage.patience, restore_best_weights=True,
                                               verbose=1)] if stage.patience else []
        return [
            *early,
            cb.HistoryRecorder(self.run, stage.phase),
            backup,
            cb.PreemptionSaver(backup),
            cb.StateRecorder(self.run, stage.phase),
            keras.callbacks.ModelCheckpoint(str(self.run.best_weights_file(stage.phase)), monitor=monitor,
                                            save_best_only=True, save_weights_only=True),
            keras.callbacks.TensorBoard(str(self.run.tensorboard_dir), write_graph=False, profile_batch=0),
        ]
