"""Which tf.distribute strategy and precision a run uses, and what that means for data and files.

``auto`` picks TPUStrategy when a TPU is reachable (``--tpu ADDRESS``, or Colab's / a TPU VM's
environment), MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes a cluster of more than one
task, MirroredStrategy with more than one GPU, and otherwise the default (one device) strategy.
Multi-worker training is TensorFlow's own engine: tf_transfer only creates the strategy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import tensorflow as tf

from tf_transfer import fs
from tf_transfer.errors import DistributeError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def tf_config() -> dict:
    """The parsed TF_CONFIG environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({e}); expected "
                              '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') \
            from None


def cluster_size(config: dict | None = None) -> int:
    cluster = (config if config is not None else tf_config()).get("cluster", {})
    return sum(len(v) for v in cluster.values())


def tpu_requested(tpu: str) -> bool:
    return bool(tpu or os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME"))


def choose(name: str = "auto", tpu: str = "") -> str:
    """The concrete strategy name for `name` on this machine."""
    if name not in STRATEGIES:
        raise DistributeError(f"--strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    if tpu_requested(tpu):
        return "tpu"
    if cluster_size() > 1:
        return "multiworker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def create(name: str = "auto", tpu: str = "") -> tf.distribute.Strategy:
    """Create the strategy. Call it before other TensorFlow work: multi-worker and TPU strategies
    configure the runtime and must come first."""
    chosen = choose(name, tpu)
    if chosen == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if chosen == "multiworker":
        if cluster_size() < 1:
            raise DistributeError("--strategy multiworker needs TF_CONFIG describing the cluster (see the README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if chosen == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


@dataclass(frozen=True)
class Topology:
    """Where this process sits in the strategy."""

    kind: str  # default | mirrored | multiworker | tpu
    replicas: int
    workers: int
    worker_index: int
    is_chief: bool


def topology(strategy: tf.distribute.Strategy) -> Topology:
    kind = {"MirroredStrategy": "mirrored", "MultiWorkerMirroredStrategy": "multiworker",
            "CollectiveAllReduceStrategy": "multiworker", "TPUStrategy": "tpu"}.get(type(strategy).__name__, "default")
    resolver = getattr(strategy, "cluster_resolver", None)
    workers, index, chief = 1, 0, True
    if kind == "multiworker" and resolver is not None:
        spec = resolver.cluster_spec().as_dict()
        workers = sum(len(v) for v in spec.values())
        task_type, task_id = resolver.task_type, resolver.task_id or 0
        has_chief = "chief" in spec
        order = (["chief"] if has_chief else []) + ["worker"]
        index = sum(len(spec.get(t, [])) for t in order[:order.index(task_type)]) + task_id \
            if task_type in order else 0
        chief = task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)
    return Topology(kind, strategy.num_replicas_in_sync, workers, index, chief)


def task_is_chief(task: dict, cluster: dict) -> bool:
    """Whether a TF_CONFIG task is the chief: the 'chief' task, or worker 0 when there is none."""
    if not task:
        return True
    return task.get("type") == "chief" or ("chief" not in cluster and task.get("type") == "worker"
                                           and int(task.get("index", 0)) == 0)


def cluster_id() -> str:
    """A stable name for the cluster in TF_CONFIG: every worker (and a restarted cluster) agrees on it."""
    cluster = json.dumps(tf_config().get("cluster", {}), sort_keys=True)
    return hashlib.sha256(cluster.encode()).hexdigest()[:10]


def precision_policy(precision: str, kind: str) -> str:
    """The Keras mixed-precision policy: auto is bfloat16 on TPU, float16 on GPUs of compute
    capability 7.0 or more, float32 otherwise (CPUs gain nothing from it)."""
    if precision not in PRECISIONS:
        raise DistributeError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if kind == "tpu":
        return "mixed_bfloat16"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        if details.get("compute_capability", (0, 0)) >= (7, 0):
            return "mixed_float16"
    return "float32"


def check_tpu_paths(kind: str, tpu: str, paths: dict[str, str]) -> None:
    """A remote TPU cannot read this machine's disk: local data/model paths must be gs:// instead."""
    if kind != "tpu" or tpu == "local":  # a TPU VM reads its own disk
        return
    local = {flag: p for flag, p in paths.items() if p and not fs.is_url(p) and fs.path(p).exists()}
    if local:
        listing = ", ".join(f"{flag} {p}" for flag, p in local.items())
        raise DistributeError(f"the TPU workers cannot read local paths ({listing}); copy the data or model to a "
                              "Cloud Storage bucket and pass gs://BUCKET/... instead (or use --tpu local on a TPU VM)")


@dataclass(frozen=True)
class Session:
    """The strategy a run trains under, where this process sits in it, and the precision policy."""

    strategy: tf.distribute.Strategy
    topology: Topology
    policy: str
    per_replica_batch: int

    @property
    def global_batch(self) -> int:
        return self.per_replica_batch * self.topology.replicas

    @property
    def shard(self) -> tuple[int, int] | None:
        """(workers, this worker's index) when each worker reads its own share of the input files."""
        t = self.topology
        return (t.workers, t.worker_index) if t.workers > 1 else None

    def scope(self):
        return self.strategy.scope()

    def describe(self, jit_compile: bool = False) -> str:
        t = self.topology
        return (f"Strategy: {t.kind}, {t.replicas} replica(s) on {t.workers} worker(s); global batch "
                f"{self.global_batch} ({self.per_replica_batch} per replica); precision {self.policy}"
                f"{'; XLA' if jit_compile else ''}")


@contextlib.contextmanager
def session(config, strategy: tf.distribute.Strategy | None = None) -> Iterator[Session]:
    """Create (or adopt) the run's strategy and set its precision policy for the block; the global
    policy is reset afterwards, so nothing leaks into the next run in this process."""
    from tf_transfer._keras import keras

    # Multi-worker and TPU strategies configure the runtime: create them before any other TF work.
    strategy = strategy or create(config.runtime.strategy, config.runtime.tpu)
    topo = topology(strategy)
    policy = precision_policy(config.runtime.precision, topo.kind)
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield Session(strategy, topo, policy, config.data.batch_size)
    finally:
        keras.mixed_precision.set_global_policy("float32")
