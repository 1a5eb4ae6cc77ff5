"""The recipe's training choices, named in one place: what each phase trains, at which learning rate,
with which optimizer, loss and metrics, and how BatchNorm behaves.

- Phase 1 trains the head(s) on a frozen backbone with Adam at ``--phase1-learning-rate``.
- Phase 2 unfreezes the top of the backbone (BatchNorm stays frozen, in inference mode, unless
  ``--train-bn``) and continues at ``--phase2-learning-rate``, by default a tenth of phase 1's.
- A backbone trained from random initialisation that trains its BatchNorm layers uses a moving-average
  momentum of 0.9 (see :data:`SCRATCH_BN_MOMENTUM`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tf_transfer.config import Config

# Keras' ImageNet models use BatchNorm momentum 0.99-0.999: from random initialisation the moving
# statistics would still sit near their initial values after a few hundred steps, and inference
# would see unnormalised activations. 0.9 lets them follow the weights within a short run.
SCRATCH_BN_MOMENTUM = 0.9
PHASE2_LR_FACTOR = 0.1  # phase 2's default learning rate, relative to phase 1's


@dataclass(frozen=True)
class Stage:
    """One fit of the recipe: which phase, what trains, for how many epochs, at which rate."""

    phase: int  # 1: backbone frozen; 2: fine-tuning
    epochs: int
    learning_rate: float
    patience: int  # early-stopping patience in epochs (0: off)
    unfreeze: str | None = None  # None: the backbone stays frozen; else --unfreeze's spec
    train_bn: bool = False

    @property
    def name(self) -> str:
        return f"phase{self.phase}"

    @property
    def frozen(self) -> bool:
        return self.unfreeze is None


def phase2_learning_rate(config: Config) -> float:
    return config.phase2.learning_rate or config.phase1.learning_rate * PHASE2_LR_FACTOR


def stages(config: Config) -> list[Stage]:
    """The stages a config trains, in order: phase 1 always (it may have 0 epochs), then phase 2."""
    p1, p2 = config.phase1, config.phase2
    out = [Stage(1, p1.epochs, p1.learning_rate, p1.patience)]
    if p2.epochs:
        out.append(Stage(2, p2.epochs, phase2_learning_rate(config), p2.patience, p2.unfreeze, p2.train_bn))
    return out


def monitor(has_validation: bool) -> str:
    """What early stopping and best checkpoints watch."""
    return "val_loss" if has_validation else "loss"


def compile_for(model, stage: Stage, config: Config) -> None:
    """Compile `model` for a stage: Adam, cross-entropy (with label smoothing), accuracy."""
    from tf_transfer._keras import keras

    with model.distribute_strategy.scope():  # optimizer and metrics live with the model's variables
        model.compile(
            optimizer=keras.optimizers.Adam(stage.learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.model.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=config.runtime.jit_compile,
            steps_per_execution=config.runtime.steps_per_execution,
        )
