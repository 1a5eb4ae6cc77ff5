"""Why tf_transfer uses tf_keras: what Keras 3 does, on the installed versions, with the two things the
project relies on. Each check runs in a fresh process and records what it saw.

1. A TF-Hub feature vector (`hub.KerasLayer`) inside a Keras 3 model, and inside a tf_keras model.
2. `model.fit` under MultiWorkerMirroredStrategy with two local workers, Keras 3 and tf_keras.

    python -m benchmarks.check_keras3      # prints JSON; benchmarks.run writes it into BENCHMARKS.md
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HUB = """
import sys
import tensorflow_hub as hub
import {keras} as keras
inputs = keras.Input((32, 32, 3))
outputs = hub.KerasLayer(sys.argv[1], trainable=False)(inputs)
model = keras.Model(inputs, keras.layers.Dense(2)(outputs))
print("OK", model.count_params())
"""

FIT = """
import json, os, sys
import numpy as np
import tensorflow as tf
import {keras} as keras
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
y = (x[:, 0] > 0).astype("int32")
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
history = model.fit(ds, epochs=2, verbose=0)
print("OK", history.history["loss"][-1])
"""


def _last_line(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode == 0:
        return proc.stdout.strip().splitlines()[-1]
    errors = [line for line in proc.stderr.strip().splitlines() if "Error" in line or "error" in line]
    return (errors[-1] if errors else proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")[:300]


def _tiny_hub_model(folder: Path) -> Path:
    code = ("import sys\nimport tf_keras as k\ni = k.Input((None, None, 3))\n"
            "x = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(4, 3)(i))\n"
            "k.Model(i, x).save(sys.argv[1], save_format='tf')\n")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return folder


def _ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def check_fit(keras: str) -> str:
    workers = [f"127.0.0.1:{p}" for p in _ports(2)]
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, "-c", FIT.format(keras=keras)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            err += "\nTimeoutError: no result within 300 s"
        results.append(_last_line(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    return results[0]


def run() -> dict:
    import keras as keras3
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory() as tmp:
        handle = _tiny_hub_model(Path(tmp) / "hub")
        hub_results = {name: _last_line(subprocess.run([sys.executable, "-c", HUB.format(keras=name), str(handle)],
                                                       capture_output=True, text=True, env=env, timeout=300))
                       for name in ("keras", "tf_keras")}
    return {"versions": {"tensorflow": tf.__version__, "keras": keras3.__version__, "tf_keras": tf_keras.__version__,
                         "tensorflow_hub": hub.__version__},
            "hub_keras_layer": hub_results,
            "multiworker_fit": {name: check_fit(name) for name in ("keras", "tf_keras")}}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
