"""Export a trained classifier as a SavedModel that TF Serving loads as it is, and verify it.

Layout: <export_dir>/<name>/<version>/ holds saved_model.pb, variables/, labels.txt, config.json,
metrics.json, assets.extra/tf_serving_warmup_requests (PredictionLog records TF Serving replays on
load) and assets.extra/verify_samples.json (sample test images with their training-time scores).
Versions are integers, never overwritten; a version is written to a hidden temporary folder and
renamed into place, so a crash leaves none.

    python -m tf_transfer.export --verify saved_models/NAME/VERSION   # re-check in this fresh process
    python -m tf_transfer.export --run runs/NAME/STAMP [--tflite float,int8]   # export a run again
    python -m tf_transfer.export --models-config saved_models          # TF Serving config for all models
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLES_FILE = Path("assets.extra") / "verify_samples.json"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
SCORE_TOLERANCE = 1e-4  # float32 models; mixed-precision ones get MIXED_TOLERANCE
MIXED_TOLERANCE = 5e-3  # float16 keeps ~3 significant digits, and graph and eager kernels round differently


class ExportError(RuntimeError):
    """An export could not be written or does not behave like the model it came from."""


def next_version(model_dir: Path) -> int:
    if not model_dir.exists():
        return 1
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0) + 1


def latest_version(model_dir: str | Path) -> Path:
    """The highest-numbered version folder of <export_dir>/<name>, or the path itself if it is a version."""
    model_dir = Path(model_dir)
    if (model_dir / "saved_model.pb").is_file():
        return model_dir
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), reverse=True) \
        if model_dir.is_dir() else []
    if not versions:
        raise ExportError(f"{model_dir} holds no exported version; expected {model_dir}/<version>/saved_model.pb")
    return model_dir / str(versions[0])


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_warmup(path: Path, name: str, samples: Sequence[bytes]) -> int:
    """TF Serving warm-up records: PredictionLogs of real images for serving_default (batch 1 and all)."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    from tf_transfer import signatures

    batches = [list(samples[:1]), list(samples)] if len(samples) > 1 else [list(samples)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=signatures.DEFAULT))
            request.inputs[signatures.BYTES_INPUT].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            log_entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log_entry.SerializeToString())
    return len(batches)


def export_classifier(
    model,
    class_names: list[str],
    image_size: int,
    export_root: str | Path,
    name: str,
    config: dict,
    metrics: dict,
    samples: Sequence[bytes] = (),
    top_k: int = 5,
    max_image_pixels: int = 50_000_000,
    tflite: Sequence[str] = (),
    representative: Sequence = (),
) -> Path:
    """Write the next version of <export_root>/<name>; returns its path.

    `samples` are encoded test images: their in-memory predictions are stored for verification and
    they become TF Serving's warm-up requests. `tflite` lists TFLite variants to write as well.
    """
    import numpy as np
    import tensorflow as tf

    from tf_transfer import images, signatures

    model_dir = Path(export_root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    try:
        fns = signatures.build(model, class_names, image_size, top_k, max_image_pixels)
        model.save(str(tmp), save_format="tf", include_optimizer=False, signatures=fns)
        signatures.mark_classify(str(tmp))
        (tmp / "labels.txt").write_text("".join(f"{c}\n" for c in class_names))
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "metrics.json", metrics)
        if samples:
            pixels = tf.stack([images.decode_and_resize(tf.constant(b), image_size) for b in samples])
            scores = model(tf.cast(pixels, tf.float32), training=False).numpy()
            mixed = any(getattr(layer, "compute_dtype", "float32") != "float32" for layer in model.submodules
                        if hasattr(layer, "compute_dtype"))
            _write_json(tmp / SAMPLES_FILE, {
                "images_b64": [base64.b64encode(b).decode("ascii") for b in samples],
                "scores": np.asarray(scores, dtype=float).round(7).tolist(),
                "class_names": class_names,
                "tolerance": MIXED_TOLERANCE if mixed else SCORE_TOLERANCE,
            })
            write_warmup(tmp / WARMUP_FILE, name, samples)
        if tflite:
            from tf_transfer import tflite as tflite_lib

            for variant in tflite:
                tflite_lib.convert(model, image_size, variant, tmp / "tflite", representative)
            (tmp / "tflite" / "labels.txt").write_text("".join(f"{c}\n" for c in class_names))
        while True:  # claim the next free version; rename fails if another export took it first
            final = model_dir / str(next_version(model_dir))
            try:
                os.rename(tmp, final)
                break
            except OSError:
                if not final.exists():
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Exported SavedModel to %s", final)
    return final


def verify(path: str | Path) -> dict:
    """Reload an export and check its serving signature against the recorded training-time scores."""
    import numpy as np
    import tensorflow as tf

    from tf_transfer import signatures

    path = Path(path)
    samples_file = path / SAMPLES_FILE
    if not samples_file.is_file():
        raise ExportError(f"{path} has no {SAMPLES_FILE}; expected an export written by tf_transfer")
    recorded = json.loads(samples_file.read_text())
    labels = (path / "labels.txt").read_text().splitlines()
    loaded = tf.saved_model.load(str(path))
    if signatures.DEFAULT not in loaded.signatures:
        raise ExportError(f"{path}: no {signatures.DEFAULT} signature; found {', '.join(loaded.signatures)}")
    images_bytes = [base64.b64decode(s) for s in recorded["images_b64"]]
    out = loaded.signatures[signatures.DEFAULT](**{signatures.BYTES_INPUT: tf.constant(images_bytes)})
    scores = out["scores"].numpy()
    classes = [[c.decode() for c in row] for row in out["classes"].numpy()]
    expected = np.asarray(recorded["scores"])
    diff = float(np.abs(scores - expected).max())
    same_top1 = bool((scores.argmax(-1) == expected.argmax(-1)).all())
    top1 = [row[0].decode() for row in out["top_k_classes"].numpy()]
    names_ok = (all(row == labels for row in classes) and labels == recorded["class_names"]
                and top1 == [labels[i] for i in expected.argmax(-1)])
    tolerance = recorded.get("tolerance", SCORE_TOLERANCE)
    return {"path": str(path), "samples": len(images_bytes), "max_score_diff": diff, "tolerance": tolerance,
            "same_top1": same_top1, "class_names_match": names_ok,
            "ok": same_top1 and names_ok and diff <= tolerance}


def verify_in_subprocess(path: str | Path, timeout: float = 600) -> dict:
    """Run verify() in a fresh Python process, so nothing from training can leak into the check."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "tf_transfer.export", "--verify", str(path), "--json"],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ExportError(f"verifying {path} failed in a fresh process:\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if not result.get("ok"):
        raise ExportError(f"export {path} does not reproduce the trained model's predictions: {result}")
    return result


def write_models_config(export_root: str | Path) -> tuple[Path, Path]:
    """TF Serving model config files for every model under export_root: models.config (paths as
    mounted at /models in the tensorflow/serving container) and models.local.config (absolute paths)."""
    root = Path(export_root).resolve()
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and any(v.name.isdigit() for v in p.iterdir()))
    if not names:
        raise ExportError(f"{root} holds no exported models")

    def render(base) -> str:
        entries = "".join(f'  config {{\n    name: "{n}"\n    base_path: "{base(n)}"\n'
                          '    model_platform: "tensorflow"\n  }\n' for n in names)
        return f"model_config_list {{\n{entries}}}\n"

    docker, local = root / "models.config", root / "models.local.config"
    docker.write_text(render(lambda n: f"/models/{n}"))
    local.write_text(render(lambda n: str(root / n)))
    return docker, local


def serving_commands(version_dir: str | Path) -> dict[str, str]:
    """Shell commands that serve this export with TF Serving (gRPC 8500, REST 8501)."""
    version_dir = Path(version_dir).resolve()
    model_dir, name = version_dir.parent, version_dir.parent.name
    return {
        "docker": (f"docker run --rm -p 8500:8500 -p 8501:8501 "
                   f"--mount type=bind,source={model_dir},target=/models/{name} -e MODEL_NAME={name} "
                   "-t tensorflow/serving"),
        "tensorflow_model_server": (f"tensorflow_model_server --port=8500 --rest_api_port=8501 "
                                    f"--model_name={name} --model_base_path={model_dir}"),
        "docker_all_models": (f"docker run --rm -p 8500:8500 -p 8501:8501 "
                              f"--mount type=bind,source={model_dir.parent},target=/models -t tensorflow/serving "
                              "--model_config_file=/models/models.config"),
        "local_dev_server": f"python -m tf_transfer.serve {model_dir}",
    }


def export_run(run_dir: str | Path, tflite: Sequence[str] = ()) -> Path:
    """Export a finished run again (a new version), from its saved config, split and final weights."""
    from tf_transfer import config as config_lib
    from tf_transfer import outputs

    run_dir = Path(run_dir)
    config = config_lib.load(run_dir / "config.json")
    if tflite:
        config = config.replace(**{"export.tflite": ",".join(tflite)})
    return outputs.export_from_run(config, run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--verify", metavar="PATH", help="check an export <name>/<version> in this fresh process")
    mode.add_argument("--run", metavar="RUN_DIR", help="export a finished run (as a new version)")
    mode.add_argument("--models-config", metavar="EXPORT_DIR", help="write TF Serving model config files")
    parser.add_argument("--tflite", metavar="VARIANTS", default="",
                        help="with --run: also write TFLite models (comma list of float,dynamic,float16,int8)")
    parser.add_argument("--json", action="store_true", help="with --verify: print the result as one JSON line")
    args = parser.parse_args(argv)
    from tf_transfer import cli

    cli.quiet_tensorflow()
    cli.setup_logging()
    if args.models_config:
        try:
            docker, local = write_models_config(args.models_config)
        except ExportError as e:
            cli.fail(str(e))
        print(f"Wrote {docker} (for the container) and {local} (for tensorflow_model_server):")
        print(f"  tensorflow_model_server --port=8500 --rest_api_port=8501 --model_config_file={local}")
        return 0
    if args.run:
        path = export_run(args.run, [v for v in args.tflite.split(",") if v])
        for label, command in serving_commands(path).items():
            print(f"{label}:\n  {command}")
        return 0
    try:
        result = verify(args.verify)
    except (ExportError, OSError) as e:
        result = {"path": args.verify, "ok": False, "error": str(e)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'OK' if result['ok'] else 'FAILED'}: {json.dumps(result, indent=2)}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
