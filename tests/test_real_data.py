"""Acceptance on real photos (../shared/datasets/cifar10_small): ImageNet weights beat random init."""

import pytest

from tf_transfer import train

from .conftest import CIFAR, SHARED_WEIGHTS, make_config, needs_shared

TRAIN_PER_CLASS, TEST_PER_CLASS = 60, 30


def _manifest(tmp_path):
    rows = ["path,label,split"]
    for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for folder in sorted((CIFAR / split).iterdir()):
            for f in sorted(folder.iterdir())[:n]:
                rows.append(f"{f},{folder.name},{split}")
    path = tmp_path / "cifar_subset.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@needs_shared
@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="../shared/weights not present")
def test_imagenet_weights_beat_random_init_on_real_photos(tmp_path):
    manifest = _manifest(tmp_path)
    accuracy = {}
    for weights in (str(SHARED_WEIGHTS), "none"):
        config = make_config(tmp_path, f"csv:{manifest}", name="cifar", **{
            "data.image_size": 96, "data.val_fraction": 0.1, "model.weights": weights,
            "phase1.epochs": 4, "phase2.epochs": 2, "phase2.unfreeze": "30", "export.enabled": False})
        accuracy[weights] = train.run(config).metrics["test"]["accuracy"]
    pretrained, scratch = accuracy[str(SHARED_WEIGHTS)], accuracy["none"]
    print(f"cifar10_small subset: pretrained {pretrained:.3f} vs random init {scratch:.3f}")
    assert pretrained >= scratch + 0.15, accuracy
