"""The Colab notebooks: committed without outputs, and executed top to bottom on small offline data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, save_tiny_backbone, shared

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SIZE = 32  # the smallest MobileNetV2 input: the notebooks are run to show that they run
SMALL = {"BACKBONE": "mobilenet_v2_0.35", "WEIGHTS": "imagenet", "IMAGE_SIZE": SIZE}


@pytest.fixture(scope="session")
def notebook_shapes(tmp_path_factory):
    """The smallest image folder every notebook still runs on: 3 classes x 16 images of 32 pixels."""
    from tf_transfer.data import demo

    return shared(tmp_path_factory, "notebook_shapes", lambda root: demo.write_shapes(root, per_class=16, size=SIZE,
                                                                                      seed=5))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _parameters_cell(path: Path) -> dict:
    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def test_the_notebooks_are_these():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_tfhub_backbones.ipynb",
                                           "03_tpu_and_multi_gpu.ipynb", "04_tuning.ipynb", "05_serving.ipynb",
                                           "06_pretrain_publish.ipynb", "07_multitask.ipynb",
                                           "08_text_classification.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_colab_instructions_install_and_colab_defaults(path):
    cells = _cells(path)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), f"{path.name} has outputs"
    assert "Open in Colab" in "".join(cells[0]["source"]) and path.name in "".join(cells[0]["source"])
    install = "".join(cells[1]["source"])
    assert "pip" in install and "TF_TRANSFER_SOURCE" in install
    assert "github.com/" not in "".join(s for c in cells for s in c["source"]).replace("github.com/<owner>", "")
    params = "".join(_parameters_cell(path)["source"])
    # the Colab default data: a TFDS name, or (named tasks need a CSV manifest) a generated one
    assert "tfds:" in params or "csv:PATH" in params, f"{path.name}: the data default should work in Colab"
    # Library code lives in the package: cells call its API and define no functions or classes.
    lines = [line.lstrip() for c in code for line in "".join(c["source"]).splitlines()]
    assert not any(line.startswith(("def ", "class ")) for line in lines)


def _execute(path: Path, tmp_path: Path, params: dict) -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(f"# Parameters injected by the test\n{injected}"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("name", [p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_offline(name, notebook_shapes, tmp_path, request):
    shapes_dir = notebook_shapes
    common = {"DATA": str(shapes_dir), "WORK_DIR": str(tmp_path / "work")}
    params = {
        "01_quickstart": {**SMALL, "BATCH_SIZE": 16, "PHASE1_EPOCHS": 2, "PHASE2_EPOCHS": 1, "UNFREEZE": "10"},
        "02_tfhub_backbones": {"HUB_HANDLE": str(save_tiny_backbone(tmp_path / "tiny_hub")),
                               "KERAS_BACKBONE": "mobilenet_v2_0.35", "KERAS_WEIGHTS": "imagenet",
                               "IMAGE_SIZE": SIZE, "BATCH_SIZE": 16, "PHASE1_EPOCHS": 1, "PHASE2_EPOCHS": 1},
        "03_tpu_and_multi_gpu": {**SMALL, "TFDS_DATA_DIR": "", "BATCH_SIZE": 16, "STEPS_PER_EXECUTION": 1,
                                 "PHASE1_EPOCHS": 1, "PHASE2_EPOCHS": 1},
        "04_tuning": {**SMALL, "ALGORITHM": "random", "MAX_TRIALS": 2,
                      "FIXED": {"phase1.epochs": 1, "phase2.epochs": 1, "data.batch_size": 16}},
        "05_serving": {**SMALL, "EPOCHS": 1, "SERVER": "local"},
        # the notebook's own method (supervised); tests/test_pretrain.py runs rotation pre-training end to end
        "06_pretrain_publish": {"SOURCE_DATA": str(shapes_dir), "METHOD": "supervised", "TARGET_DATA": str(shapes_dir),
                                "IMAGE_SIZE": SIZE, "BATCH_SIZE": 16, "PRETRAIN_EPOCHS": 1, "TARGET_EPOCHS": 1},
        "07_multitask": {**SMALL, "DATA": "", "BATCH_SIZE": 16, "PHASE1_EPOCHS": 2, "PHASE2_EPOCHS": 1},  # own data
        "08_text_classification": {},  # filled below: it needs the generated texts and the tiny checkpoint
    }[name]
    if name == "08_text_classification":
        params = {"DATA": f"csv:{request.getfixturevalue('text_data') / 'reviews.csv'}",
                  "BACKBONE": f"hf:{request.getfixturevalue('tiny_hf')}", "MAX_SEQ_LENGTH": 24,
                  "PHASE1_EPOCHS": 3, "PHASE2_EPOCHS": 1}
    _execute(ROOT / "notebooks" / f"{name}.ipynb", tmp_path, {**common, **params})
