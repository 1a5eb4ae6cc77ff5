"""Data, weights, run folders and exports on a non-local file system: TensorFlow's in-memory ``ram://``
file system stands in for gs:// (same tf.io.gfile API, works offline; it lives in this process only)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SIZE
from tf_transfer import fs
from tf_transfer.folders import ModelDir, RunDir, atomic_write, read_json, write_json
from tf_transfer.fs import GPath

WEIGHTS = Path(__file__).resolve().parents[1] / "tf_transfer" / "assets" / \
    "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"


def bucket() -> GPath:
    """A fresh, empty ram:// folder."""
    return fs.path(f"ram://test-{uuid.uuid4().hex[:8]}")


def test_paths_dispatch_on_the_scheme_and_keep_urls_whole():
    assert isinstance(fs.path("gs://b/x"), GPath) and str(fs.path("gs://b//x/y/")) == "gs://b/x/y"
    assert isinstance(fs.path("runs/x"), Path) and fs.path("file:///tmp/x") == Path("/tmp/x")
    assert fs.path("~/x") == Path.home() / "x"
    p = fs.path("gs://bucket/runs") / "name" / "20260101-000000"
    assert str(p) == "gs://bucket/runs/name/20260101-000000" and p.name == "20260101-000000"
    assert str(p.parent) == "gs://bucket/runs/name" and p.with_name("x.json").suffix == ".json"
    assert str(p.relative_to(fs.path("gs://bucket"))) == "runs/name/20260101-000000"
    with pytest.raises(ValueError):
        p.relative_to(fs.path("gs://other"))


def test_gpath_reads_writes_lists_and_renames_like_pathlib():
    root = bucket()
    (root / "a" / "b").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        (root / "a").mkdir()
    with pytest.raises(FileNotFoundError):
        (root / "x" / "y").mkdir()
    (root / "a" / "b" / "x.txt").write_text("héllo")
    (root / "a" / "y.txt").write_bytes(b"y")
    assert [p.name for p in root.iterdir()] == ["a"]
    assert [str(p.relative_to(root)) for p in fs.files_under(root)] == ["a/b/x.txt", "a/y.txt"]
    assert (root / "a" / "b" / "x.txt").read_text() == "héllo" and (root / "a" / "b" / "x.txt").stat().st_size == 6
    assert (root / "a").is_dir() and not (root / "a").is_file() and (root / "a" / "y.txt").is_file()
    with (root / "a" / "b" / "x.txt").open(newline="") as f:
        assert f.read() == "héllo"
    with pytest.raises(FileExistsError):
        (root / "a" / "y.txt").rename(root / "a" / "b" / "x.txt")
    (root / "a" / "y.txt").rename(root / "z.txt")
    assert (root / "z.txt").read_bytes() == b"y" and not (root / "a" / "y.txt").exists()
    with pytest.raises(FileNotFoundError):
        (root / "missing").stat()
    fs.rmtree(root / "a")
    assert not (root / "a").exists()


def test_atomic_writes_and_local_copies_of_urls():
    root = bucket()
    write_json(root / "runs" / "s.json", {"phase": 2})
    assert read_json(root / "runs" / "s.json") == {"phase": 2} and read_json(root / "none.json", 7) == 7
    assert [p.name for p in (root / "runs").iterdir()] == ["s.json"], "no temporary file is left behind"

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(root / "runs" / "s.json", fail)
    assert read_json(root / "runs" / "s.json") == {"phase": 2}, "a failed write leaves the old file"
    (root / "w.bin").write_bytes(b"one")
    first = fs.local_copy(root / "w.bin")
    assert isinstance(first, Path) and first.read_bytes() == b"one"
    (root / "w.bin").write_bytes(b"two!")
    assert fs.local_copy(root / "w.bin").read_bytes() == b"two!", "a changed file is downloaded again"


def test_model_folder_at_a_url_ignores_strays_and_publishes_a_staged_version(tmp_path):
    models = ModelDir(bucket() / "saved_models" / "m")
    models.path.mkdir(parents=True)
    (models.path / "1").write_text("a stray file named like a version")
    (models.path / "7").mkdir()  # incomplete: no saved_model.pb
    assert models.versions() == []
    with models.staging() as staged:
        assert isinstance(staged, Path), "a version is written and verified locally"
        (staged / "variables").mkdir()
        (staged / "variables" / "v.index").write_text("v")
        (staged / ModelDir.SAVED_MODEL).write_text("pb")
        final = models.publish(staged)
    assert str(final) == f"{models.path}/8" and models.versions() == [8]
    assert (final / "variables" / "v.index").read_text() == "v"
    assert not [p for p in models.path.iterdir() if p.name.startswith(".partial-")]


def _upload_images(shapes_dir: Path, root: GPath) -> GPath:
    fs.upload(shapes_dir, root / "shapes")
    return root / "shapes"


@pytest.fixture(scope="module")
def remote_run(shapes_dir, tmp_path_factory):
    """One small run whose data, weights, run folder and export are all on ram://, through the command."""
    from tf_transfer import train

    root = bucket()
    data = _upload_images(shapes_dir, root)
    fs.upload(WEIGHTS, root / "weights" / WEIGHTS.name)
    argv = ["--name", "shapes", "--data", str(data), "--runs-dir", str(root / "runs"),
            "--export-dir", str(root / "saved_models"), "--weights", str(root / "weights" / WEIGHTS.name),
            "--image-size", str(SIZE), "--batch-size", "16", "--phase1-epochs", "2", "--phase2-epochs", "1",
            "--phase1-patience", "0", "--phase2-patience", "0", "--verify-export", "--cache", "none"]
    assert train.main(argv) == 0
    (run,) = list((root / "runs" / "shapes").iterdir())
    return root, run


@pytest.mark.slow  # one small run at URLs (about a minute), shared by these tests
def test_a_run_reads_and_writes_everything_at_urls(remote_run):
    import tensorflow as tf

    root, run = remote_run
    names = {p.name for p in run.iterdir()}
    assert {RunDir.CONFIG, RunDir.STATE, RunDir.HISTORY, RunDir.METRICS, RunDir.REPORT, RunDir.LOG,
            RunDir.SPLIT_MANIFEST, RunDir.PLOTS} <= names, names
    assert len((run / RunDir.HISTORY_LOG).read_text().splitlines()) == 3
    config = json.loads((run / RunDir.CONFIG).read_text())
    assert config["runs_dir"].startswith("ram://") and config["model"]["weights"].startswith("ram://")
    keys = [row["key"] for row in csv.DictReader(io.StringIO((run / RunDir.SPLIT_MANIFEST).read_text()))]
    assert keys and all(k.startswith(f"{root}/shapes/") for k in keys), keys[:3]
    assert "gs:/" not in (run / RunDir.LOG).read_text().replace("gs://", "")
    models = ModelDir(root / "saved_models" / "shapes")
    assert models.versions() == [1]
    loaded = tf.saved_model.load(str(models.latest()))
    image = (root / "shapes" / "circle").iterdir().__next__().read_bytes()
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([image]))
    assert np.isclose(out["scores"].numpy().sum(), 1.0, atol=1e-4)


@pytest.mark.slow  # one small run at URLs (about a minute), shared by these tests
def test_evaluate_and_predict_read_a_remote_export_and_remote_images(remote_run, capsys):
    from tf_transfer import predict
    from tf_transfer.workflows import evaluation

    root, _ = remote_run
    out = evaluation.evaluate_export(str(root / "saved_models" / "shapes"), str(root / "shapes"),
                                     output=str(root / "evaluation"))
    assert out.location == str(root / "evaluation")
    assert json.loads(fs.path(out.locate(RunDir.METRICS)).read_text())["num_examples"] == 90
    assert fs.path(out.locate(RunDir.REPORT)).is_file()
    images = root / "shapes" / "square"
    assert predict.main([str(root / "saved_models" / "shapes"), str(images), str(images / "missing.png"),
                         "--output", str(root / "predictions.csv")]) == 0
    text = capsys.readouterr()
    assert len([line for line in text.out.splitlines() if line.startswith(f"{images}/")]) == 30
    assert f"{images}/missing.png: skipped (cannot read: No such file or directory)" in text.err
    assert len((root / "predictions.csv").read_text().splitlines()) == 1 + 30 * 3


@pytest.mark.slow  # one small run at URLs (about a minute), shared by these tests
def test_a_remote_run_resumes_on_a_machine_without_its_mirror(remote_run):
    from tf_transfer import train

    root, run = remote_run
    shutil.rmtree(fs.cache_home() / "runs")  # a new machine: nothing of the run on local disk
    folder = RunDir.existing(str(run))
    assert folder.location == str(run) and folder.done("export") and folder.config_file.is_file()
    assert train.main(["--resume", str(run)]) == 0
    assert "Exported earlier" in (run / RunDir.LOG).read_text(), "the resumed run finds its export at the URL"
    assert ModelDir(root / "saved_models" / "shapes").versions() == [1]
    assert len((run / RunDir.HISTORY_LOG).read_text().splitlines()) == 3, "no epoch ran again"


@pytest.mark.slow  # one small run at URLs (about a minute), shared by these tests
def test_export_again_from_a_remote_run_folder(remote_run):
    from tf_transfer import export

    root, run = remote_run
    assert export.main(["--run", str(run)]) == 0
    assert ModelDir(root / "saved_models" / "shapes").versions() == [1, 2]
    assert (run / RunDir.EXPORT_PATH).read_text().strip() == f"{root}/saved_models/shapes/2"


def test_a_csv_manifest_at_a_url_with_relative_paths(shapes_dir):
    from tf_transfer.data import sources

    root = bucket()
    data = _upload_images(shapes_dir, root)
    rows = [f"shapes/{p.relative_to(data).as_posix()},{p.parent.name}" for p in fs.files_under(data)]
    (root / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\nshapes/missing.png,circle\n")
    catalog = sources.resolve(f"csv:{root}/manifest.csv")
    files = [e.key for e in catalog.partitions["all"]]
    assert len(files) == len(rows) and all(f.startswith(f"{root}/shapes/") for f in files)
    assert catalog.skipped == {f"{root}/shapes/missing.png": f"file not found (line {len(rows) + 2})"}
    assert not catalog.outside
    (root / "escape.csv").write_text("path,label\n../elsewhere.png,x\n")
    assert sources.resolve(f"csv:{root}/escape.csv").skipped, "a missing file outside the root is skipped"


def test_caches_must_be_local():
    from tf_transfer import config as config_lib
    from tf_transfer.errors import ConfigError

    for key in ("data.cache", "phase1.feature_cache"):
        with pytest.raises(ConfigError, match=f"{key}: expected a local folder"):
            config_lib.validate(config_lib.apply_overrides(config_lib.Config(), {key: "gs://b/cache"}))
