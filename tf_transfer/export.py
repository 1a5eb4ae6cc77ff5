"""Export a trained classifier as a SavedModel that TF Serving loads as it is, and verify it.

Layout: <export_dir>/<name>/<version>/ with saved_model.pb, variables/, labels.txt, config.json,
metrics.json and assets.extra/verify_samples.json. Versions are integers, never overwritten; a
version is written to a hidden temporary folder and renamed into place, so a crash leaves none.

CLI: ``python -m tf_transfer.export --verify PATH`` reloads an export in this (fresh) process and
checks it against the predictions recorded at export time.
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

SIGNATURE = "serving_default"
INPUT_NAME = "image_bytes"
SAMPLES_FILE = Path("assets.extra") / "verify_samples.json"
SCORE_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export could not be written or does not behave like the model it came from."""


def next_version(model_dir: Path) -> int:
    if not model_dir.exists():
        return 1
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0) + 1


def serving_signatures(model, class_names: list[str], image_size: int) -> dict:
    """serving_default: a batch of encoded images (strings) -> scores and class names."""
    import tensorflow as tf

    from tf_transfer import images

    names = tf.constant(class_names)
    spec = tf.TensorSpec([image_size, image_size, 3], tf.uint8)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve_bytes(image_bytes):
        pixels = tf.map_fn(lambda b: images.decode_and_resize(b, image_size), image_bytes, fn_output_signature=spec)
        scores = model(tf.cast(pixels, tf.float32), training=False)
        classes = tf.tile(names[tf.newaxis], [tf.shape(scores)[0], 1])
        return {"scores": scores, "classes": classes}

    return {SIGNATURE: serve_bytes}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def export_classifier(
    model,
    class_names: list[str],
    image_size: int,
    export_root: str | Path,
    name: str,
    config: dict,
    metrics: dict,
    samples: Sequence[bytes] = (),
) -> Path:
    """Write the next version of <export_root>/<name>; returns its path.

    `samples` are encoded images whose in-memory predictions are stored, so that the export can be
    verified later (here, and by ``python -m tf_transfer.export --verify``).
    """
    import numpy as np
    import tensorflow as tf

    from tf_transfer import images

    model_dir = Path(export_root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save(str(tmp), save_format="tf", include_optimizer=False,
                   signatures=serving_signatures(model, class_names, image_size))
        (tmp / "labels.txt").write_text("".join(f"{c}\n" for c in class_names))
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "metrics.json", metrics)
        if samples:
            pixels = tf.stack([images.decode_and_resize(tf.constant(b), image_size) for b in samples])
            scores = model(tf.cast(pixels, tf.float32), training=False).numpy()
            _write_json(tmp / SAMPLES_FILE, {
                "images_b64": [base64.b64encode(b).decode("ascii") for b in samples],
                "scores": np.asarray(scores, dtype=float).round(7).tolist(),
                "class_names": class_names,
            })
        while True:  # claim the next free version; rename fails if another export took it first
            version = next_version(model_dir)
            final = model_dir / str(version)
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
    """Reload an export and check its serving signature against the recorded predictions."""
    import numpy as np
    import tensorflow as tf

    path = Path(path)
    samples_file = path / SAMPLES_FILE
    if not samples_file.is_file():
        raise ExportError(f"{path} has no {SAMPLES_FILE}; expected an export written by tf_transfer")
    recorded = json.loads(samples_file.read_text())
    labels = (path / "labels.txt").read_text().splitlines()
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ExportError(f"{path}: no {SIGNATURE} signature; found {', '.join(loaded.signatures)}")
    images_bytes = [base64.b64decode(s) for s in recorded["images_b64"]]
    out = loaded.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(images_bytes)})
    scores = out["scores"].numpy()
    classes = [[c.decode() for c in row] for row in out["classes"].numpy()]
    expected = np.asarray(recorded["scores"])
    diff = float(np.abs(scores - expected).max())
    same_top1 = bool((scores.argmax(-1) == expected.argmax(-1)).all())
    names_ok = all(row == labels for row in classes) and labels == recorded["class_names"]
    result = {"path": str(path), "samples": len(images_bytes), "max_score_diff": diff,
              "same_top1": same_top1, "class_names_match": names_ok,
              "ok": same_top1 and names_ok and diff <= SCORE_TOLERANCE}
    return result


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify", metavar="PATH", required=True, help="an export folder <name>/<version>")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    from tf_transfer import cli

    cli.quiet_tensorflow()
    try:
        result = verify(args.verify)
    except ExportError as e:
        result = {"path": args.verify, "ok": False, "error": str(e)}
    if args.json:
        print(json.dumps(result))
    else:
        status = "OK" if result["ok"] else "FAILED"
        print(f"{status}: {json.dumps(result, indent=2)}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
