"""Export a trained classifier as a SavedModel that TF Serving loads as it is, and verify it.

A version (<export_dir>/<name>/<version>/, layout in :class:`tf_transfer.folders.ModelDir`) holds the
SavedModel with its serving signatures, labels.txt, config.json, metrics.json, TF Serving warm-up
records and verification samples. It is written and verified in a hidden staging folder and only then
renamed into place as the next integer version: TF Serving, which loads a new version folder within
a second, never sees one that is incomplete or unverified, and a failed verification publishes nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tf_transfer import folders, fs
from tf_transfer.errors import ExportError
from tf_transfer.folders import ModelDir

log = logging.getLogger(__name__)

SCORE_TOLERANCE = 1e-4  # float32 models; mixed-precision ones get MIXED_TOLERANCE
MIXED_TOLERANCE = 5e-3  # float16 keeps ~3 significant digits, and graph and eager kernels round differently


@dataclass
class ExportSpec:
    """What goes into one export besides the model itself."""

    class_names: list[str]
    image_size: int
    config: dict
    metrics: dict
    samples: Sequence[bytes] = ()  # encoded images: verification samples and warm-up requests
    top_k: int = 5
    max_image_pixels: int = 50_000_000
    tflite: Sequence[str] = ()
    representative: Sequence = field(default_factory=list)  # calibration pixels for int8 TFLite
    verify: bool = False  # reload in a fresh process before publishing
    tta: bool = False  # serve scores averaged with the horizontally flipped image
    kind: str = "image"  # "image": encoded image bytes in; "text": UTF-8 strings in (samples are UTF-8 bytes)
    tasks: Sequence = ()  # tf_transfer.tasks.Task per head when there are named tasks; empty: one task
    thresholds: dict = field(default_factory=dict)  # multi-label tasks: {task: per-label thresholds}
    # also save every layer's traced call: keras.models.load_model then needs no layer config (TF-Hub and model:
    # backbones, text encoders); a Keras Applications model rebuilds from its config, and skipping the traces
    # makes its export about 3x faster (TF Serving uses the signatures, which are saved either way)
    keras_traces: bool = True

    def heads(self) -> list:
        """The tasks of the export's heads (one unnamed task over class_names by default)."""
        from tf_transfer.tasks import Task

        return list(self.tasks) or [Task("", tuple(self.class_names))]

    def task_file(self) -> dict:
        """tasks.json: per task its kind, labels file, output names and (multi-label) thresholds."""
        out = []
        for t in self.heads():
            names = ["classes", "scores", "all_scores"] if t.multi_label else \
                ["scores", "classes", "top_k_scores", "top_k_classes"]
            out.append({**t.to_dict(), "labels_file": ModelDir.task_labels(t.name),
                        "outputs": [t.prefix + n for n in names],
                        **({"thresholds": self.thresholds[t.name]} if t.multi_label else {})})
        return {"tasks": out}


def synthetic_images(size: int, count: int = 6, seed: int = 0) -> list[bytes]:
    """Generated images (gradients, shapes and noise; JPEG and PNG; several sizes and aspect ratios) for
    verification and warm-up, so that exports carry no training data unless asked to."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = (size, size) if i % 3 == 0 else (size + 17 * i, max(8, size - 5 * i)) if i % 3 == 1 else (2 * size, size)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 255 // max(h + w - 2, 1)],
                        axis=-1)
        box = (slice(h // 4, h // 4 + h // 3), slice(w // 3, w // 3 + w // 3))
        base[box] = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        encode = tf.io.encode_jpeg if i % 2 == 0 else tf.io.encode_png
        out.append(encode(tf.constant(pixels)).numpy())
    return out


SYNTHETIC_TEXTS = ("", "a short text", "A longer text, with punctuation; numbers (12, 3.5) and UPPER case!",
                   "ünïcödé, emoji \N{GRINNING FACE} and CJK \u6f22\u5b57", "word " * 600)


def redact_paths(config: dict) -> dict:
    """The config with local paths cut to their last component, so an export does not reveal the
    folders it was trained from; URLs, TFDS names and registry names stay."""
    import copy

    def local(value: str) -> bool:
        return bool(value) and "://" not in value and ("/" in value or "\\" in value or Path(value).is_absolute())

    def short(value: str) -> str:
        prefix, sep, rest = value.partition(":") if value.startswith(("csv:", "hub:", "model:")) else ("", "", value)
        return f"{prefix}{sep}{Path(rest).name}" if local(rest) else value

    out = copy.deepcopy(config)
    for section, key in (("data", "source"), ("data", "cache"), ("data", "tfds_data_dir"), ("model", "backbone"),
                         ("model", "weights"), ("phase1", "feature_cache"), ("export", "export_dir"), ("", "runs_dir")):
        node = out.get(section, {}) if section else out
        if isinstance(node.get(key), str):
            node[key] = short(node[key])
    return out


def write_warmup(path: Path, name: str, samples: Sequence[bytes], input_name: str = "") -> int:
    """TF Serving warm-up records: PredictionLogs for serving_default (batch 1 and all samples)."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    from tf_transfer.serving import signatures

    batches = [list(samples[:1]), list(samples)] if len(samples) > 1 else [list(samples)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=signatures.DEFAULT))
            request.inputs[input_name or signatures.BYTES_INPUT].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            log_entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log_entry.SerializeToString())
    return len(batches)


def _write_samples(version: Path, model, spec: ExportSpec, name: str) -> None:
    """The samples' in-memory scores (what verification compares against) and the warm-up records."""
    import numpy as np
    import tensorflow as tf

    from tf_transfer.data import images
    from tf_transfer.serving import signatures

    if spec.kind == "text":
        pixels = tf.constant(list(spec.samples))  # the model's input: strings
    else:
        pixels = tf.cast(tf.stack([images.decode_and_resize(tf.constant(b), spec.image_size) for b in spec.samples]),
                         tf.float32)

    def scores_of(x) -> dict:
        out = model(x, training=False)
        return {h: np.asarray(p) for h, p in out.items()} if isinstance(out, dict) else {"head": np.asarray(out)}

    scores = scores_of(pixels)
    if spec.tta:
        flipped = scores_of(tf.reverse(pixels, axis=[2]))
        scores = {h: (s + flipped[h]) / 2.0 for h, s in scores.items()}
    mixed = any(getattr(layer, "compute_dtype", "float32") != "float32" for layer in model.submodules
                if hasattr(layer, "compute_dtype"))
    recorded = {t.prefix + ("all_scores" if t.multi_label else "scores"): scores[t.head].astype(float).round(7).tolist()
                for t in spec.heads()}
    folders.write_json(version / ModelDir.SAMPLES, {
        "kind": spec.kind, "images_b64": [base64.b64encode(b).decode("ascii") for b in spec.samples],
        "scores": recorded.pop("scores", None), "task_scores": recorded,
        "class_names": spec.class_names, "tasks": [t.to_dict() for t in spec.tasks],
        "tolerance": MIXED_TOLERANCE if mixed else SCORE_TOLERANCE,
    })
    write_warmup(version / ModelDir.WARMUP, name, spec.samples,
                 signatures.TEXT_INPUT if spec.kind == "text" else signatures.BYTES_INPUT)


def write_version(model, spec: ExportSpec, version: Path, name: str) -> None:
    """Write every file of one export version into `version` (a staging folder)."""
    from tf_transfer.serving import signatures

    if spec.kind == "text":
        fns = signatures.build_text(model, spec.heads(), spec.top_k, spec.thresholds)
    else:
        fns = signatures.build(model, spec.heads(), spec.image_size, spec.top_k, spec.max_image_pixels, spec.tta,
                               spec.thresholds)
    model.save(str(version), save_format="tf", include_optimizer=False, signatures=fns, save_traces=spec.keras_traces)
    signatures.mark_classify(str(version))
    labels = "".join(f"{c}\n" for c in spec.class_names)
    if spec.tasks:
        folders.write_json(version / ModelDir.TASKS, spec.task_file())
        for t in spec.tasks:
            folders.write_text(version / ModelDir.task_labels(t.name), "".join(f"{c}\n" for c in t.class_names))
    else:
        folders.write_text(version / ModelDir.LABELS, labels)
    folders.write_json(version / ModelDir.CONFIG, spec.config)
    folders.write_json(version / ModelDir.METRICS, spec.metrics)
    if spec.samples:
        _write_samples(version, model, spec, name)
    if spec.tflite and spec.kind == "text":
        pass  # the text modality reports the skip
    elif spec.tflite and spec.tasks:
        log.warning("TFLite export skipped: it supports models with one head (this one has %d)", len(spec.tasks))
    elif spec.tflite:
        from tf_transfer.serving import tflite as tflite_lib

        for variant in spec.tflite:
            tflite_lib.convert(model, spec.image_size, variant, version / ModelDir.TFLITE, spec.representative)
        folders.write_text(version / ModelDir.TFLITE_LABELS, labels)


def export_classifier(model, spec: ExportSpec, export_root: str | Path, name: str,
                      write: Callable[[object, ExportSpec, Path, str], None] = write_version) -> Path:
    """Write, verify (if spec.verify) and publish the next version of <export_root>/<name>; returns its path."""
    model_dir = ModelDir(fs.path(export_root) / name)
    with model_dir.staging() as staged:
        write(model, spec, staged, name)
        if spec.verify:
            result = verify_in_subprocess(staged)
            log.info("Export verified in a fresh process: %d samples, same top-1, max score diff %.2g",
                     result["samples"], result["max_score_diff"])
        final = model_dir.publish(staged)
    log.info("Exported SavedModel to %s", final)
    return final


def load(path):
    """tf.saved_model.load, with tensorflow-text's ops registered first when it is installed (a text
    model's tokenizer needs them)."""
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401 - registers the ops
    except ImportError:  # pragma: no cover - in requirements.txt
        pass
    return tf.saved_model.load(str(path))


def export_tasks(path) -> list:
    """The tasks of an export (tasks.json; one unnamed task over labels.txt without it), with class names."""
    from tf_transfer.tasks import Task

    path = fs.path(path)
    if (path / ModelDir.TASKS).is_file():
        return [Task.from_dict(t) for t in json.loads((path / ModelDir.TASKS).read_text())["tasks"]]
    if not (path / ModelDir.LABELS).is_file():
        raise ExportError(f"{path} has neither {ModelDir.LABELS} nor {ModelDir.TASKS}; expected an export written "
                          "by tf_transfer")
    return [Task("", tuple((path / ModelDir.LABELS).read_text().splitlines()))]


def verify(path: str | Path) -> dict:
    """Reload an export and check its serving signature against the recorded training-time scores."""
    import numpy as np
    import tensorflow as tf

    from tf_transfer.serving import signatures

    path = fs.path(path)
    samples_file = path / ModelDir.SAMPLES
    if not samples_file.is_file():
        raise ExportError(f"{path} has no {ModelDir.SAMPLES}; expected an export written by tf_transfer")
    recorded = json.loads(samples_file.read_text())
    tasks = export_tasks(path)
    loaded = load(path)
    if signatures.DEFAULT not in loaded.signatures:
        raise ExportError(f"{path}: no {signatures.DEFAULT} signature; found {', '.join(loaded.signatures)}")
    images_bytes = [base64.b64decode(s) for s in recorded["images_b64"]]
    input_name = signatures.TEXT_INPUT if recorded.get("kind") == "text" else signatures.BYTES_INPUT
    out = loaded.signatures[signatures.DEFAULT](**{input_name: tf.constant(images_bytes)})
    expected_all = {"scores": recorded["scores"], **recorded.get("task_scores", {})}
    diff, same_top1, names_ok = 0.0, True, [t.to_dict() for t in tasks if t.name] == recorded.get("tasks", [])
    for t in tasks:
        key = t.prefix + ("all_scores" if t.multi_label else "scores")
        scores, expected = out[key].numpy(), np.asarray(expected_all[key])
        diff = max(diff, float(np.abs(scores - expected).max()))
        same_top1 &= bool((scores.argmax(-1) == expected.argmax(-1)).all())
        if not t.multi_label:
            labels = list(t.class_names)
            classes = [[c.decode() for c in row] for row in out[t.prefix + "classes"].numpy()]
            top1 = [row[0].decode() for row in out[t.prefix + "top_k_classes"].numpy()]
            names_ok &= all(row == labels for row in classes) and top1 == [labels[i] for i in expected.argmax(-1)]
    if not tasks[0].name:
        names_ok &= list(tasks[0].class_names) == recorded["class_names"]
    tolerance = recorded.get("tolerance", SCORE_TOLERANCE)
    return {"path": str(path), "samples": len(images_bytes), "max_score_diff": diff, "tolerance": tolerance,
            "same_top1": same_top1, "class_names_match": names_ok,
            "ok": same_top1 and names_ok and diff <= tolerance}


def verify_in_subprocess(path: str | Path, timeout: float = 600) -> dict:
    """Run verify() in a fresh Python process, so nothing from training can leak into the check."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        proc = subprocess.run([sys.executable, "-m", "tf_transfer.export", "--verify", str(path), "--json"],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ExportError(f"verifying {path} did not finish within {timeout:.0f} s; nothing was published") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ExportError(f"verifying {path} failed in a fresh process; nothing was published:\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if not result.get("ok"):
        raise ExportError(f"the export does not reproduce the trained model's predictions, so it was not "
                          f"published: {result}")
    return result


def _pbtxt_string(value: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def write_models_config(export_root: str | Path) -> tuple[Path, Path]:
    """TF Serving model config files for every model under export_root: models.config (paths as
    mounted at /models in the tensorflow/serving container) and models.local.config (absolute paths)."""
    root = fs.path(export_root).resolve()
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and ModelDir(p).versions()) if root.is_dir() else []
    if not names:
        raise ExportError(f"{root} holds no exported models; expected {root}/<name>/<version>/saved_model.pb")

    def render(base) -> str:
        entries = "".join(f"  config {{\n    name: {_pbtxt_string(n)}\n    base_path: {_pbtxt_string(base(n))}\n"
                          '    model_platform: "tensorflow"\n  }\n' for n in names)
        return f"model_config_list {{\n{entries}}}\n"

    docker, local = root / "models.config", root / "models.local.config"
    folders.write_text(docker, render(lambda n: f"/models/{n}"))
    folders.write_text(local, render(lambda n: str(root / n)))
    return docker, local


def serving_commands(version_dir: str | Path) -> dict[str, str]:
    """Shell commands (quoted for a POSIX shell) that serve this export with TF Serving (gRPC 8500, REST 8501)."""
    version_dir = fs.path(version_dir).resolve()
    model_dir, name = version_dir.parent, version_dir.parent.name
    q = shlex.quote
    if fs.is_url(version_dir):  # TF Serving reads gs:// and s3:// itself: nothing to mount
        return {
            "docker": (f"docker run --rm -p 8500:8500 -p 8501:8501 -t tensorflow/serving "
                       f"{q(f'--model_name={name}')} {q(f'--model_base_path={model_dir}')}"),
            "tensorflow_model_server": (f"tensorflow_model_server --port=8500 --rest_api_port=8501 "
                                        f"{q(f'--model_name={name}')} {q(f'--model_base_path={model_dir}')}"),
            "docker_all_models": (f"docker run --rm -p 8500:8500 -p 8501:8501 -t tensorflow/serving "
                                  f"{q(f'--model_config_file={model_dir.parent}/models.config')}"),
            "local_dev_server": f"python -m tf_transfer.serve {q(str(model_dir))}",
        }
    return {
        "docker": (f"docker run --rm -p 8500:8500 -p 8501:8501 "
                   f"--mount {q(f'type=bind,source={model_dir},target=/models/{name}')} "
                   f"-e {q(f'MODEL_NAME={name}')} -t tensorflow/serving"),
        "tensorflow_model_server": (f"tensorflow_model_server --port=8500 --rest_api_port=8501 "
                                    f"{q(f'--model_name={name}')} {q(f'--model_base_path={model_dir}')}"),
        "docker_all_models": (f"docker run --rm -p 8500:8500 -p 8501:8501 "
                              f"--mount {q(f'type=bind,source={model_dir.parent},target=/models')} "
                              "-t tensorflow/serving --model_config_file=/models/models.config"),
        "local_dev_server": f"python -m tf_transfer.serve {q(str(model_dir))}",
    }
