"""Pre-training a backbone (supervised, or rotation prediction without labels) and publishing it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SIZE, history_lines, make_config
from tf_transfer.errors import DataError
from tf_transfer.folders import PublishedDir, RunDir
from tf_transfer.workflows import pretraining


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())))


def test_rotation_data_turns_each_image_four_ways_and_keeps_its_copies_in_one_split(shapes_dir, tmp_path):
    flat = tmp_path / "unlabelled"
    flat.mkdir()
    for i, f in enumerate(sorted(shapes_dir.rglob("*.jpg"))[:20]):
        (flat / f"{i}.jpg").write_bytes(f.read_bytes())
    (flat / "broken.png").write_bytes(b"not an image")
    config = make_config(tmp_path, str(flat), **{"data.val_fraction": 0.2, "data.test_fraction": 0.2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TF_TRANSFER_CACHE", str(tmp_path / "cache"))
        folder = pretraining.rotation_folder(config)
        assert pretraining.rotation_folder(config) == folder, "a complete folder is reused"
    counts = {split: {r: len(list((folder / split / r).iterdir())) for r in pretraining.ROTATIONS}
              for split in ("train", "val", "test")}
    per_split = {split: set(c.values()) for split, c in counts.items()}
    assert all(len(v) == 1 for v in per_split.values()), counts
    assert sum(v.pop() for v in per_split.values()) == 20, "every readable image, the broken one skipped"
    assert counts["val"]["rot000"] >= 3 and counts["test"]["rot000"] >= 3
    for split in ("train", "val", "test"):
        names = {r: sorted(p.name for p in (folder / split / r).iterdir()) for r in pretraining.ROTATIONS}
        assert len({tuple(v) for v in names.values()}) == 1, "each image's four copies share one split"
    first = sorted((folder / "train" / "rot000").iterdir())[0]
    upright = _png(first)
    assert upright.shape == (SIZE, SIZE, 3)
    for k, name in enumerate(pretraining.ROTATIONS):
        np.testing.assert_array_equal(_png(folder / "train" / name / first.name), np.rot90(upright, k))


def test_unlabelled_sources_and_their_errors(shapes_dir, tmp_path):
    assert len(pretraining.unlabelled_files(str(shapes_dir))) == 90, "class folders are read, labels ignored"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=f"--data {empty}: no image files"):
        pretraining.unlabelled_files(str(empty))
    with pytest.raises(DataError, match="expected a folder of images"):
        pretraining.unlabelled_files(str(tmp_path / "missing"))


def test_pretrain_config_from_scratch_trains_every_layer_and_does_not_export(shapes_dir, tmp_path):
    base = make_config(tmp_path, str(shapes_dir), **{"model.weights": "none", "phase1.epochs": 3, "phase2.epochs": 2})
    c = pretraining.pretrain_config(base, "supervised")
    assert (c.phase1.epochs, c.phase2.epochs, c.phase2.unfreeze, c.phase2.train_bn) == (0, 5, "all", True)
    assert not c.export.enabled and c.data.source == str(shapes_dir) and c.data.augment
    warm = pretraining.pretrain_config(base.replace(**{"model.weights": "imagenet"}), "supervised")
    assert (warm.phase1.epochs, warm.phase2.epochs, warm.phase2.unfreeze) == (3, 2, base.phase2.unfreeze)


@pytest.mark.slow  # a rotation pre-training run from scratch, published, resumed
def test_rotation_pretraining_publishes_a_backbone_and_resumes(shapes_dir, tmp_path):
    import tensorflow_hub as hub

    from tf_transfer import pretrain

    out, runs = tmp_path / "ssl-backbone", tmp_path / "runs"
    argv = ["--method", "rotation", "--data", str(shapes_dir), "--weights", "none", "--image-size", str(SIZE),
            "--phase1-epochs", "1", "--phase2-epochs", "2", "--batch-size", "32", "--runs-dir", str(runs),
            "--name", "ssl", "--out", str(out), "--license", "MIT"]
    assert pretrain.main(argv) == 0
    card = PublishedDir(out).card()
    assert card["source_data"]["class_names"] == list(pretraining.ROTATIONS) and card["license"] == "MIT"
    PublishedDir(out).check()
    features = hub.KerasLayer(str(out), trainable=True)(np.zeros((2, SIZE, SIZE, 3), "float32"))
    assert features.shape[0] == 2
    (run,) = list((runs / "ssl").iterdir())
    config = json.loads(RunDir(run).config_file.read_text())
    assert not config["data"]["augment"] and config["phase1"]["epochs"] == 0 and config["phase2"]["epochs"] == 3
    epochs = len(history_lines(run))
    assert pretrain.main(["--resume", str(run), "--out", str(out), "--overwrite"]) == 0
    assert len(history_lines(run)) == epochs == 3, "a finished run is published again without training"
