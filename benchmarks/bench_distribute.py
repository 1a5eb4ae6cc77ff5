"""Distribution overhead on this machine: MirroredStrategy on two logical CPUs and two
MultiWorkerMirroredStrategy processes against one process, same data and global batch; and the cost
of a BackupAndRestore save against the epoch it protects."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from tf_transfer.data import demo
from tf_transfer.folders import RunDir

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
ARGS = ["--image-size", "96", "--phase1-epochs", "0", "--phase2-epochs", "4", "--unfreeze", "all",
        "--phase2-patience", "0", "--no-augment", "--no-export", "--no-report"]

RUN = textwrap.dedent("""
    import sys
    import tensorflow as tf
    if sys.argv[1] == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tf_transfer import train
    sys.exit(train.main(sys.argv[2:]))
""")


def _run(runs_dir: Path) -> RunDir:
    (run,) = [RunDir(p) for p in runs_dir.glob("*/*") if (p / RunDir.HISTORY).is_file()]
    return run


def _epoch_seconds(runs_dir: Path) -> float:
    epochs = _run(runs_dir).history()["epochs"]
    return statistics.median(e["seconds"] for e in epochs[1:])  # the first epoch traces and fills caches


def _train(kind: str, data: Path, workdir: Path, batch: int, extra=()) -> float:
    runs = workdir / f"runs-{kind}-{len(extra)}"
    args = ["--data", str(data), "--name", kind, "--runs-dir", str(runs), "--batch-size", str(batch), *ARGS, *extra]
    if kind == "multiworker":
        cmd = [sys.executable, "-m", "tf_transfer.launch", "--workers", "2", "--", *args]
    else:
        cmd = [sys.executable, "-c", RUN, kind, "--strategy", "mirrored" if kind == "mirrored" else "default", *args]
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _epoch_seconds(runs)


def run(workdir: Path) -> dict:
    data = demo.write_shapes(workdir / "shapes", per_class=64, size=96, seed=3)
    single = _train("default", data, workdir, 16)
    mirrored = _train("mirrored", data, workdir, 8)  # 2 replicas x 8 = the same global batch of 16
    multi = _train("multiworker", data, workdir, 8)
    every_step = _train("default", data, workdir, 16, ["--save-every", "1"])
    counts = _run(workdir / "runs-default-0").read_json(RunDir.DATA_SUMMARY)["counts"]
    train_images = sum(c["train"] for c in counts.values())
    steps = -(-train_images // 16)  # global batch 16
    per_save = max(0.0, every_step - single) / steps
    return {"epoch_seconds": {"single": single, "mirrored_2cpu": mirrored, "multiworker_2proc": multi,
                              "single_save_every_step": every_step},
            "mirrored_overhead": mirrored / single, "multiworker_overhead": multi / single,
            "save_seconds": per_save, "save_fraction_of_epoch": per_save / single, "steps_per_epoch": steps,
            "train_images": train_images}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
