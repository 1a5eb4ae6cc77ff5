"""Export a finished run again (a new version), from its saved config, split and final weights."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tf_transfer import config as config_lib
from tf_transfer.data import datasets
from tf_transfer.errors import RunError
from tf_transfer.folders import RunDir
from tf_transfer.serving import savedmodel
from tf_transfer.workflows import recipe

log = logging.getLogger(__name__)


def export_run(run_dir: str | Path, tflite: Sequence[str] = ()) -> Path:
    """Rebuild a finished run's model from its final weights and export it as a new version."""
    run = RunDir.existing(run_dir)
    config = config_lib.load(run.config_file)
    if tflite:
        config = config.replace(**{"export.tflite": ",".join(tflite)})
    if not run.has_weights("final"):
        raise RunError(f"{run.location} has no final weights; expected a run folder that finished training")
    with run.logging():
        modality = recipe.modality_for(config)  # images or texts
        data = datasets.load_split(run)
        model = modality.rebuild(modality.heads(data), run.weights_file("final"))
        metrics = run.read_json(RunDir.METRICS, {})
        path = savedmodel.export_classifier(model, modality.export_spec(model, data, metrics),
                                            config.export.export_dir, config.name)
        run.write_export_path(path)
        log.info("SavedModel: %s", path)
    return path
