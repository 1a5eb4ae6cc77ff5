"""What a run leaves after training: metrics per split (and of phase 1 alone), the from-scratch
baseline, the verified export and the report. Only the chief of a multi-worker job writes them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tf_transfer import fs
from tf_transfer.config import Config
from tf_transfer.evaluation import chance, report
from tf_transfer.evaluation import metrics as metrics_lib
from tf_transfer.folders import ModelDir, RunDir
from tf_transfer.serving import savedmodel
from tf_transfer.tasks import Task
from tf_transfer.training.phases import Stage
from tf_transfer.training.trainer import Trainer

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    run_dir: Path
    config: Config
    metrics: dict
    history: list[dict]
    export_path: Path | None = None
    model: object = field(default=None, repr=False)
    class_names: list[str] = field(default_factory=list)
    trainable_params: dict[str, int] = field(default_factory=dict)  # per stage

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)


def evaluate_splits(model, splits: dict, tasks: list[Task], config: Config,
                    predictions: dict | None = None, tta: bool = False) -> dict:
    """Metrics per split from one prediction pass each; keeps (labels, probs) in `predictions` (with
    named tasks: predict_heads' arrays). Multi-label tasks get per-label thresholds chosen on the
    validation split (0.5 without one), applied to every split and recorded as metrics["thresholds"]."""
    out: dict = {}
    if not tasks[0].name:
        for split, ds in splits.items():
            if ds is not None:
                labels, probs = metrics_lib.predict(model, ds, tta)
                out[split] = metrics_lib.metrics(labels, probs, list(tasks[0].class_names), config.evaluation.top_k)
                if predictions is not None:
                    predictions[split] = (labels, probs)
        return out
    found = {split: metrics_lib.predict_heads(model, ds, tta) for split, ds in splits.items() if ds is not None}
    thresholds = {t.name: metrics_lib.choose_thresholds(*_labelled(found["val"][t.head]))
                  if "val" in found else [0.5] * t.num_classes for t in tasks if t.multi_label}
    for split, heads in found.items():
        out[split] = metrics_lib.task_metrics(heads, tasks, config.evaluation.top_k, thresholds)
    if predictions is not None:
        predictions.update(found)
    if thresholds:
        out["thresholds"] = thresholds
    return out


def _labelled(prediction: tuple) -> tuple:
    y, mask, probs = prediction
    return y[mask], probs[mask]


def log_metrics(metrics: dict) -> None:
    for split in ("val", "test"):
        if split in metrics:
            log.info("%s", metrics_lib.format_any(metrics[split], f"{split} split (final model):"))
    rows = [(label, metrics.get(key, {}).get("test") if key else metrics.get("test"))
            for label, key in (("phase 1 (frozen backbone)", "phase1"), ("final (fine-tuned)", None),
                               ("from scratch, same budget", "baseline_scratch"),
                               ("TF-IDF + logistic regression", "baseline_tfidf"))]
    rows = [(label, m) for label, m in rows if m]
    if len(rows) > 1:
        log.info("Test accuracy: %s", "; ".join(f"{label} {m['accuracy']:.4f}" for label, m in rows))
    for split, m in metrics.get("tta", {}).items():
        log.info("Test-time augmentation, %s split: accuracy %.4f -> %.4f", split, metrics[split]["accuracy"],
                 m["accuracy"])


class Outputs:
    """Evaluates, exports and reports one run (the modality says what the model's inputs are)."""

    def __init__(self, config: Config, run: RunDir, modality, data, splits,
                 baseline: Callable[[object], dict] | None = None):
        self.config, self.run, self.modality = config, run, modality
        self.data, self.splits = data, splits
        self.baseline = baseline  # trains the from-scratch baseline on the same data, returns its metrics

    def after_stage(self, stage: Stage, model) -> None:
        """After phase 1 (when fine-tuning follows): its metrics alone, to show what fine-tuning adds."""
        if stage.phase == 1 and stage.epochs and self.config.phase2.epochs:
            self.run.write_json(RunDir.PHASE1_METRICS, evaluate_splits(model, self.splits.evaluation(),
                                                                self.data.tasks, self.config))

    def finish(self, trainer: Trainer, session) -> RunResult:
        """Metrics, baseline, export and report; a non-chief worker's job ends with training."""
        run, heads = self.run, self.modality.heads(self.data)
        run.write_history(run.epochs(), trainer.stages)
        result = RunResult(run.path, self.config, {}, run.epochs(), None, trainer.model, self.data.class_names,
                           trainer.trainable_params)
        if not run.chief:
            log.info("Worker %d finished training; the chief writes metrics and the export", run.worker)
            return result
        if session.topology.workers > 1:  # evaluate and export a plain copy: the cluster's variables need every worker
            result.model = self.modality.rebuild(heads, run.weights_file("final"))
        predictions: dict = {}
        result.metrics = self._metrics(result.model, predictions)
        result.export_path = self._export(result.model, result.metrics)
        if self.config.evaluation.report:
            self._report(result.metrics, result.history, predictions, result.export_path)
        log.info("Run folder: %s", run.location)
        return result

    def _metrics(self, model, predictions: dict) -> dict:
        metrics = evaluate_splits(model, self.splits.evaluation(), self.data.tasks, self.config, predictions)
        phase1 = self.run.read_json(RunDir.PHASE1_METRICS)
        if phase1:
            metrics["phase1"] = phase1
        if self.config.evaluation.tta:  # what averaging with the flipped image buys
            metrics["tta"] = evaluate_splits(model, self.splits.evaluation(), self.data.tasks, self.config,
                                             tta=True)
        flags = self._not_learnt(metrics, predictions)
        for verdict, key in (("not_learnt", "not_learnt"), ("too_few", "too_few_to_tell")):
            if any(f["verdict"] == verdict for f in flags):
                metrics[key] = [f for f in flags if f["verdict"] == verdict]
        self.run.write_json(RunDir.METRICS, metrics)  # the run's own results first: a baseline never costs them
        if self.baseline:
            key = f"baseline_{self.config.evaluation.baseline}"
            metrics[key] = self.run.done("baseline") or self._train_baseline()
            self.run.mark_done("baseline", metrics[key])
            self.run.write_json(RunDir.METRICS, metrics)
        log_metrics(metrics)
        for flag in flags:
            log.log(logging.WARNING if flag["verdict"] == "not_learnt" else logging.INFO, "%s", chance.describe(flag))
        return metrics

    def _train_baseline(self) -> dict:
        """The baseline's metrics, or {"skipped": why} when it cannot be trained on this data (a warning)."""
        try:
            return self.baseline(self.data)
        except Exception as e:  # any failure of the optional comparison leaves the run whole
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            log.warning("The %s baseline was skipped: it could not be trained on this data (%s); the run's own "
                        "results stand", self.config.evaluation.baseline, reason)
            return {"skipped": reason}

    def _not_learnt(self, metrics: dict, predictions: dict) -> list[dict]:
        """Tasks and labels within noise of chance on the test split (else validation): see evaluation.chance."""
        split = "test" if "test" in predictions else "val"
        if split not in predictions:
            return []
        data = self.config.data
        flip = data.flip if data.augment else "none"
        return chance.find(metrics[split], self.data.tasks, predictions[split], split, flip)

    def _export(self, model, metrics: dict) -> Path | None:
        """Export once per run: a resumed run that exported already reports that version again."""
        if not self.config.export.enabled:
            return None
        run_id = self.run.run_id()
        earlier = ModelDir(fs.path(self.config.export.export_dir) / self.config.name).find(run_id)
        if earlier:  # also when a kill came between publishing and recording it
            log.info("Exported earlier: %s", earlier)
            self.run.mark_done("export", str(earlier))
            return earlier
        spec = self.modality.export_spec(model, self.data, metrics)
        spec.config["run"] = {"id": run_id, "folder": self.run.path.name}
        path = savedmodel.export_classifier(model, spec, self.config.export.export_dir, self.config.name)
        self.run.mark_done("export", str(path))
        self.run.write_export_path(path)
        log.info("SavedModel: %s", path)
        commands = savedmodel.serving_commands(path)
        log.info("Serve it with TF Serving:\n  %s\n  %s\nor locally for development:\n  %s",
                 commands["docker"], commands["tensorflow_model_server"], commands["local_dev_server"])
        return path

    def _report(self, metrics: dict, history: list[dict], predictions: dict, export_path) -> None:
        split = "test" if "test" in predictions else "val"
        if split not in predictions:
            return
        self.run.write_text(RunDir.METRICS_TEXT, "\n\n".join(
            metrics_lib.format_any(metrics[s], f"{s}:") for s in ("val", "test") if s in metrics) + "\n")
        stages = self.run.history().get("stages", [])
        dataset = self.splits.test if split == "test" else self.splits.val
        tasks = self.data.named_tasks
        task_counts = {t.name: self.data.counts(i) for i, t in enumerate(tasks)}
        if tasks:
            plot_paths = report.write_task_plots(self.run, tasks, metrics[split], history, stages, task_counts)
        else:
            plot_paths = report.write_plots(self.run, self.data.class_names, metrics[split], dataset,
                                            *predictions[split], history=history, stages=stages,
                                            counts=self.data.counts())
        path = report.write_report(
            self.run, f"tf_transfer run {self.config.name}: {self.run.path.name}", split, metrics[split],
            plot_paths, config=self.config.to_dict(),
            data_summary={"source": self.data.source, "counts": self.data.counts(), "task_counts": task_counts},
            skipped=self.data.skipped, all_metrics=metrics, export_path=str(export_path) if export_path else None,
            stages=stages, worst=report.worst_texts(dataset, *predictions[split], self.data.class_names)
            if self.modality.kind == "text" and not tasks else None)
        log.info("Report: %s", path)
