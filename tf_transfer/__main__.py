"""python -m tf_transfer: list the commands."""

from __future__ import annotations

import sys

COMMANDS = {
    "train": "train a classifier by transfer learning (two phases) and export it",
    "tune": "search the recipe's hyperparameters with keras-tuner",
    "evaluate": "evaluate an exported model on labelled data (metrics, plots, report.html)",
    "export": "verify an export, export a finished run again, or write TF Serving's model config",
    "predict": "classify image files with an export, in this process or through a model server",
    "serve": "a local TF-Serving-compatible REST and gRPC server for exports",
    "launch": "try multi-worker training with N local worker processes",
    "pretrain": "pre-train a backbone on your source data (labels or rotation prediction) and publish it",
    "publish": "publish a run's backbone as a reusable SavedModel (TF-Hub format) with a model card",
}


def main() -> int:
    width = max(map(len, COMMANDS))
    print("tf_transfer: transfer learning for Keras/TensorFlow, served by TF Serving.\n\nCommands:")
    for name, what in COMMANDS.items():
        print(f"  python -m tf_transfer.{name:<{width}}  {what}")
    print("\nEach command takes --help.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
