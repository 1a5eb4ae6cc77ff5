"""The recipe's training choices, named in one place: what each stage trains, at which learning rate
and schedule, with which optimizer, loss and metrics, what is monitored, and how BatchNorm behaves.

- Phase 1 trains the head(s) on a frozen backbone with Adam at ``--phase1-learning-rate`` (constant).
- Phase 2 fine-tunes: the top of the backbone is unfrozen (BatchNorm stays frozen, in inference mode,
  unless ``--train-bn``), in one stage or several (``--unfreeze 20,60,all``), each continuing from
  the one before at ``--phase2-learning-rate`` (default: 0.3x phase 1's), constant or with
  warm-up and cosine decay (``--schedule``), with discriminative rates per block (``--lr-decay``)
  and AdamW weight decay (``--weight-decay``).
- Every stage ends with the best weights so far: a stage that does not beat them on ``--monitor``
  is rolled back (see the trainer).
- A backbone trained from random initialisation that trains its BatchNorm layers uses a moving-average
  momentum of 0.9 (see :data:`SCRATCH_BN_MOMENTUM`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tf_transfer import tasks as tasks_lib
from tf_transfer.config import Config
from tf_transfer.tasks import Task

log = logging.getLogger(__name__)

# Keras' ImageNet models use BatchNorm momentum 0.99-0.999: from random initialisation the moving
# statistics would still sit near their initial values after a few hundred steps, and inference
# would see unnormalised activations. 0.9 lets them follow the weights within a short run.
SCRATCH_BN_MOMENTUM = 0.9
# Phase 2's default peak learning rate, relative to phase 1's. With warm-up and cosine decay (the default
# schedule) 0.3 trained better than the classic tenth on real photos (BENCHMARKS.md, "Fine-tuning recipes").
PHASE2_LR_FACTOR = 0.3


@dataclass(frozen=True)
class Stage:
    """One fit of the recipe: which phase, what trains, for how many epochs, at which rate."""

    phase: int  # 1: backbone frozen; 2: fine-tuning
    epochs: int
    learning_rate: float
    patience: int  # early-stopping patience in epochs (0: off)
    unfreeze: str | None = None  # None: the backbone stays frozen; else --unfreeze's spec for this stage
    train_bn: bool = False
    index: int = 1  # the stage's number within its phase
    count: int = 1  # how many stages the phase has
    schedule: str = "constant"
    warmup: float = 0.0
    lr_decay: float = 1.0
    weight_decay: float = 0.0

    @property
    def name(self) -> str:
        """phase1, phase2 (one fine-tuning stage) or phase2.1, phase2.2, ... (staged unfreezing)."""
        return f"phase{self.phase}" if self.count == 1 else f"phase{self.phase}.{self.index}"

    @property
    def frozen(self) -> bool:
        return self.unfreeze is None

    def describe(self) -> str:
        if self.frozen:
            return "phase 1 (backbone frozen)"
        stage = f", stage {self.index} of {self.count}" if self.count > 1 else ""
        return f"phase 2{stage} (unfreeze {self.unfreeze})"


def phase2_learning_rate(config: Config) -> float:
    return config.phase2.learning_rate or config.phase1.learning_rate * PHASE2_LR_FACTOR


def _stage_epochs(config: Config, count: int) -> list[int]:
    p2 = config.phase2
    if p2.stage_epochs:
        return [int(e) for e in p2.stage_epochs.split(",")]
    base, extra = divmod(p2.epochs, count)
    return [base + (1 if i >= count - extra else 0) for i in range(count)]


def stages(config: Config) -> list[Stage]:
    """The stages a config trains, in order: phase 1 always (it may have 0 epochs), then phase 2's."""
    p1, p2 = config.phase1, config.phase2
    out = [Stage(1, p1.epochs, p1.learning_rate, p1.patience)]
    if p2.epochs:
        specs = [s.strip() for s in p2.unfreeze.split(",")]
        for i, (spec, epochs) in enumerate(zip(specs, _stage_epochs(config, len(specs)), strict=True), start=1):
            out.append(Stage(2, epochs, phase2_learning_rate(config), p2.patience, spec, p2.train_bn, i, len(specs),
                             p2.schedule, p2.warmup, p2.lr_decay, p2.weight_decay))
    return out


def monitor(config: Config, has_validation: bool) -> tuple[str, str]:
    """(metric, mode) that early stopping, best checkpoints and the keep-the-best rule watch."""
    name = config.monitor if has_validation else config.monitor.removeprefix("val_")
    return name, "max" if name.endswith("accuracy") else "min"


def learning_rate(stage: Stage, steps_per_epoch: int | None):
    """The stage's learning rate: a constant, or warm-up + cosine decay over the stage's steps."""
    if stage.schedule != "cosine" or stage.frozen:
        return stage.learning_rate
    if not steps_per_epoch:
        log.warning("The number of steps per epoch is unknown; %s uses a constant learning rate", stage.name)
        return stage.learning_rate
    from tf_transfer.training.optimizers import WarmupCosine

    total = steps_per_epoch * stage.epochs
    return WarmupCosine(stage.learning_rate, total, int(stage.warmup * total))


def optimizer(stage: Stage, model, steps_per_epoch: int | None):
    """Adam (AdamW with weight decay), with per-block rates when --lr-decay < 1."""
    from tf_transfer._keras import keras
    from tf_transfer.training import optimizers

    lr = learning_rate(stage, steps_per_epoch)
    factors = optimizers.layer_rates(model, stage.lr_decay) if not stage.frozen and stage.lr_decay < 1 else {}
    if stage.weight_decay and not stage.frozen:
        return optimizers.DiscriminativeAdamW(lr, weight_decay=stage.weight_decay, factors=factors) if factors \
            else keras.optimizers.AdamW(lr, weight_decay=stage.weight_decay)
    return optimizers.DiscriminativeAdam(lr, factors=factors) if factors else keras.optimizers.Adam(lr)


def losses(config: Config, tasks: list[Task], reduction: str = "auto") -> dict[str, object]:
    """Per head: cross-entropy (softmax heads) or binary cross-entropy (multi-label heads), with the
    task's label smoothing (--task-label-smoothing, else --label-smoothing)."""
    from tf_transfer._keras import keras

    smoothing = tasks_lib.per_task(config.model.task_label_smoothing, tasks, "--task-label-smoothing", float,
                                   config.model.label_smoothing)
    return {t.head: (keras.losses.BinaryCrossentropy if t.multi_label else keras.losses.CategoricalCrossentropy)(
        label_smoothing=smoothing[t.name], reduction=reduction) for t in tasks}


def loss_weights(config: Config, tasks: list[Task]) -> dict[str, float]:
    """Per head: its weight in the total loss (--task-weights; 1 where not given)."""
    weights = tasks_lib.per_task(config.model.task_weights, tasks, "--task-weights", float, 1.0)
    return {t.head: weights[t.name] for t in tasks}


def accuracy(task: Task):
    from tf_transfer._keras import keras

    return keras.metrics.BinaryAccuracy(name="accuracy") if task.multi_label else \
        keras.metrics.CategoricalAccuracy(name="accuracy")


def compile_for(model, stage: Stage, config: Config, steps_per_epoch: int | None = None, backbone_model=None) -> None:
    """Compile `model` for a stage: its optimizer, cross-entropy (with label smoothing), accuracy; with
    several heads, a loss and accuracy per head (masked by the pipeline's loss weights) and
    --task-weights. `backbone_model` is the classifier whose backbone blocks get per-block rates
    (default: `model`)."""
    from tf_transfer.models import classifier

    tasks = classifier.model_tasks(model)
    named = {} if not tasks[0].name else {
        "loss": losses(config, tasks), "loss_weights": loss_weights(config, tasks),
        "weighted_metrics": {t.head: [accuracy(t)] for t in tasks}}
    with model.distribute_strategy.scope():  # optimizer and metrics live with the model's variables
        model.compile(
            optimizer=optimizer(stage, backbone_model or model, steps_per_epoch),
            **(named or {"loss": losses(config, tasks)[tasks[0].head], "metrics": [accuracy(tasks[0])]}),
            jit_compile=config.runtime.jit_compile,
            steps_per_execution=config.runtime.steps_per_execution,
        )
