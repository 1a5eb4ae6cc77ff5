"""Pre-train a backbone on source data and publish it (the start of somebody else's transfer).

- ``supervised``: the source's own labels. With ``--weights none`` the backbone trains from random
  initialisation, every layer, for all the epochs of both phases; with ImageNet weights (or a weights
  file) the usual two phases continue from them.
- ``rotation``: self-supervised rotation prediction (Gidaris et al., 2018) on unlabelled images: every
  image is shown turned by 0, 90, 180 and 270 degrees and the model learns which, which needs the
  shapes and orientation of what is in the picture. Labels in the source, if any, are ignored. The
  turned copies are written once to the local cache, split by source image (no image has copies in
  two splits); augmentation is off, since flips and turns would change the answer.

Either way it is a normal run (run folder, resume, strategies, report) followed by
:func:`~tf_transfer.workflows.publishing.publish`.

- ``mlm``: masked-language modelling on unlabelled texts, continuing a BERT-family encoder (``hf:DIR``)
  and publishing it in the TF-Hub BERT contract (:mod:`~tf_transfer.workflows.pretraining_text`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from tf_transfer import config as config_lib
from tf_transfer import folders, fs
from tf_transfer.config import Config
from tf_transfer.errors import ConfigError, DataError
from tf_transfer.folders import RunDir
from tf_transfer.fs import GPath

log = logging.getLogger(__name__)

METHODS = ("supervised", "rotation", "mlm")
ROTATIONS = ("rot000", "rot090", "rot180", "rot270")  # sorted names = label order


def pretrain(config: Config, method: str, out: str, license: str = "unspecified", overwrite: bool = False,
             resume_dir: str | None = None) -> Path | GPath:
    """Train (or resume) a pre-training run of `config` with `method`, then publish its backbone to `out`."""
    from tf_transfer.workflows import publishing, recipe

    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "mlm" or (resume_dir is not None and RunDir.existing(resume_dir).state().get("method") == "mlm"):
        from tf_transfer.workflows.pretraining_text import pretrain_mlm

        return pretrain_mlm(config, out, license, overwrite, resume_dir)
    if resume_dir is None:
        config = pretrain_config(config, method)
    else:  # the interrupted run's own config (and for rotation its data folder)
        config = config_lib.load(RunDir.existing(resume_dir).config_file)
    result = recipe.run(config, resume_dir)
    return publishing.publish(str(result.run_dir), out, license, overwrite)


def pretrain_config(config: Config, method: str) -> Config:
    """The run that pre-trains: from scratch when there are no weights, no export (the publication is
    the output), and for rotation the turned copies as data, without augmentation."""
    from tf_transfer.workflows import recipe

    changes: dict = {"export.enabled": False, "evaluation.baseline": "none"}
    if config.model.weights == "none":  # from scratch: every layer trains from the first epoch
        scratch = recipe.scratch_config(config).to_dict()
        changes.update({f"{phase}.{key}": value for phase in ("phase1", "phase2")
                        for key, value in scratch[phase].items() if value != config.to_dict()[phase][key]})
    if method == "rotation":
        changes.update({"data.source": str(rotation_folder(config)), "data.augment": False})
    return config.replace(**changes)


def rotation_folder(config: Config) -> Path:
    """<cache>/pretrain/rotation-<key>/{train,val,test}/rot<degrees, 3 digits>/<n>.png, written once per source,
    size and split fractions (a complete folder is reused; a partial one never appears)."""
    from tf_transfer.models import backbones

    files = unlabelled_files(config.data.source)
    size = config.data.image_size or backbones.default_image_size(config.model.backbone)
    d = config.data
    key = hashlib.sha256("\n".join([*files, f"{size} {d.val_fraction} {d.test_fraction} {config.seed}"]).encode())
    folder = fs.cache_home() / "pretrain" / f"rotation-{key.hexdigest()[:16]}"
    if folder.is_dir():
        log.info("Rotation data: reusing %s", folder)
        return folder
    log.info("Rotation data: writing 4 turned copies of %d images at %dx%d to %s", len(files), size, size, folder)
    with folders.atomic_dir(folder) as tmp:
        written, skipped = _write_rotations(files, size, _split_of(len(files), d.val_fraction, d.test_fraction,
                                                                     config.seed), tmp)
        if not written:  # raised inside: no folder is left to be reused
            raise DataError(f"{config.data.source}: none of its {len(files)} images could be read")
    if skipped:
        log.warning("Rotation data: skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0])
    return folder


def unlabelled_files(source: str) -> list[str]:
    """Every image file of a source, labels ignored: a folder at any depth (class folders or none), or
    the rows of a CSV manifest."""
    from tf_transfer.data import sources
    from tf_transfer.data.images import IMAGE_EXTENSIONS

    if source.startswith("tfds:") or source == "demo":
        catalog = sources.resolve(source)
        if catalog.kind == "tfds":
            raise DataError("rotation pre-training reads image files; export the TFDS images to a folder first")
        return sorted(e.key for examples in catalog.partitions.values() for e in examples)
    if source.startswith("csv:"):
        catalog = sources.resolve(source)
        return sorted(e.key for examples in catalog.partitions.values() for e in examples)
    root = fs.path(source)
    if not root.is_dir():
        raise DataError(f"--data {source}: expected a folder of images (at any depth), csv:PATH or demo")
    files = [str(f) for f in fs.files_under(root) if f.suffix.lower() in IMAGE_EXTENSIONS
             and not any(p.startswith(".") for p in f.relative_to(root).parts)]
    if not files:
        raise DataError(f"--data {source}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under it")
    return files


def _split_of(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """A seeded split per source image, so its four turned copies stay together."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    split = ["train"] * n
    for rank, i in enumerate(order):
        split[i] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return split


def _write_rotations(files: list[str], size: int, splits: list[str], out: Path) -> tuple[int, list[str]]:
    import tensorflow as tf

    from tf_transfer.data import images

    written, skipped = 0, []
    for i, (file, split) in enumerate(zip(files, splits, strict=True)):
        try:
            pixels = images.checked_decode(tf.io.read_file(file), size, images.DEFAULT_MAX_PIXELS)
        except (tf.errors.OpError, ValueError):
            skipped.append(file)
            continue
        for k, name in enumerate(ROTATIONS):
            target = out / split / name / f"{i:07d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tf.io.encode_png(tf.image.rot90(pixels, k)).numpy())
        written += 1
        if (i + 1) % max(1, len(files) // 10) == 0:
            log.info("Rotation data: %d of %d images", i + 1, len(files))
    return written, skipped
