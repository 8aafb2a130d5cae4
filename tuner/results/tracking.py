"""MLflow recorder: one parent run per study, one nested run per trial, front tags and artifacts."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tuner.core.records import ArtifactRecord, TrialResult
from tuner.measure.memory import peak_rss_mb

# Creating or migrating a sqlite store logs INFO lines to stderr; the user asked for a study, not for those.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

ROLE = "tuner.role"


class MlflowRecorder:
    """Runs of one study, told apart from other studies of the same name by ``study_uid``.

    A study's run directory can be deleted and the experiment run again under the same name: that is a new
    study (new uid, new parent run), not a continuation of the old runs in the same MLflow experiment.
    """

    def __init__(self, tracking_uri: str | None, study_name: str, metric_name: str, study_uid: str):
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = self.client.tracking_uri
        self.study_name = study_name
        self.study_uid = study_uid
        self.metric_name = metric_name
        experiment = self.client.get_experiment_by_name(study_name)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(study_name))
        if experiment is None or "mlflow.experimentKind" not in experiment.tags:
            # The MLflow UI then opens the experiment on its runs table, not on the GenAI trace overview.
            self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", "custom_model_development")
        self.parent_run_id = self._find_or_create_parent()

    def _find_or_create_parent(self) -> str:
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{ROLE}` = 'study' and tags.`tuner.study_uid` = '{self.study_uid}'",
            max_results=1)
        if runs:  # a resumed study keeps its parent run
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=self.study_name,
                                     tags={ROLE: "study", "tuner.study": self.study_name,
                                           "tuner.study_uid": self.study_uid})
        return run.info.run_id

    def log_study_inputs(self, files: Sequence[str | Path], params: dict[str, Any]) -> None:
        for path in files:
            self.client.log_artifact(self.parent_run_id, str(path), artifact_path="inputs")
        existing = self.client.get_run(self.parent_run_id).data.params
        new = [Param(k, str(v)[:500]) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(self.parent_run_id, params=new)

    def existing_trial_runs(self) -> dict[int, str]:
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{ROLE}` = 'trial' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=50000)
        return {int(r.data.tags["tuner.trial_number"]): r.info.run_id for r in runs}

    def log_trial(self, number: int, result: TrialResult, summary: str, stage: str = "", plan: str = "") -> str:
        """One nested run for a finished trial (COMPLETE or FAIL); ``stage``: where it came from (reference,
        plan, seed, sampler), and for a plan trial, which point of the plan it is."""
        failed = not result.completed
        tags = {"mlflow.parentRunId": self.parent_run_id, ROLE: "trial", "tuner.trial_number": str(number),
                "tuner.study": self.study_name, "tuner.state": result.state,
                "tuner.artifact_key": result.key or "", "tuner.pareto": "false"}
        if stage:
            tags["tuner.stage"] = stage
        if plan:
            tags["tuner.plan"] = plan[:5000]
        if failed:
            tags["tuner.fail_reason"] = (result.error or "unknown")[:5000]
        if result.screened_out:  # the fidelity it reached: a subset estimate, never timed, never on the front
            tags["tuner.fidelity"] = f"subset of {result.scored_samples} samples (screened out, not timed)" + (
                "; scored as the pruned fp32 model, before export and quantization" if result.screened_before_build
                else "")
        if result.artifact_sha256:
            tags["tuner.artifact_sha256"] = result.artifact_sha256
        for key, value in result.environment.items():
            tags[f"tuner.env.{key}"] = (",".join(value) if isinstance(value, list) else str(value))[:500]
        run_id = self.client.create_run(self.experiment_id, run_name=f"trial-{number:04d}", tags=tags).info.run_id
        candidate = result.candidate
        params = [Param("summary", summary[:500]), Param("opt_level", str(candidate.get("opt_level"))),
                  Param("fusions", "+".join(candidate.get("fusions", ())) or "none"),
                  Param("disabled_optimizers", "+".join(candidate.get("disabled_optimizers", ()))[:500] or "none")]
        metrics = [Metric(k, float(v), 0, 0) for k, v in _trial_metrics(result, self.metric_name).items()]
        self.client.log_batch(run_id, metrics=metrics, params=params)
        record = ArtifactRecord(candidate, key=result.key, trial=number, artifact_sha256=result.artifact_sha256,
                                summary=summary, environment=result.environment)
        self.client.log_dict(run_id, record.to_dict(), "candidate.json")
        if failed and result.traceback:
            self.client.log_text(run_id, result.traceback, "error.txt")
        self.client.log_dict(run_id, result.to_dict(), "outcome.json")  # lets a resumed driver adopt this result
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
        return run_id

    def logged_result(self, run_id: str) -> TrialResult | None:
        """The result a trial run recorded (``outcome.json``), or None if its logging did not finish."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                data = json.loads(Path(self.client.download_artifacts(run_id, "outcome.json", tmp)).read_text())
        except Exception:  # a run created but killed before its outcome was written
            return None
        return TrialResult.from_dict(data)

    def mark_front(self, trial_runs: dict[int, str], front_trials: set[int], models: dict[int, Path]) -> None:
        """Tag every trial run with ``tuner.pareto`` and attach the model file to front members (``model.onnx``; a
        torch-runtime model with its ``candidate.json``, which the ONNX file carries in its metadata)."""
        for number, run_id in trial_runs.items():
            on_front = number in front_trials
            self.client.set_tag(run_id, "tuner.pareto", "true" if on_front else "false")
            if on_front and number in models:
                names = {f.path for f in self.client.list_artifacts(run_id)}
                path = models[number]
                if path.name not in names:
                    self.client.log_artifact(run_id, str(path))
                    if path.suffix != ".onnx" and (path.parent / "candidate.json").is_file():
                        self.client.log_artifact(run_id, str(path.parent / "candidate.json"))

    def log_front(self, files: list[Path], metrics: dict[str, float], step: int) -> None:
        """Replace the parent run's front files and log front metrics at ``step`` (trials finished so far)."""
        for path in files:
            self.client.log_artifact(self.parent_run_id, str(path))
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_run_id,
                              metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_summary(self, summary: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "study_summary.json"
            path.write_text(json.dumps(summary, indent=2, default=str))
            self.client.log_artifact(self.parent_run_id, str(path))
        self.log_study_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})

    def log_study_metrics(self, values: dict[str, float]) -> None:
        if values:
            self.client.log_batch(self.parent_run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in values.items()])

    def set_note(self, markdown: str) -> None:
        """The study run's description: MLflow's UI shows it on the run's page."""
        self.client.set_tag(self.parent_run_id, "mlflow.note.content", markdown)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status)


def _trial_metrics(result: TrialResult, metric_name: str) -> dict[str, float]:
    """A completed trial's MLflow metrics: its values, model statistics and seconds per stage."""
    if result.screened_out:
        return {metric_name: result.metric, f"{metric_name}_stderr": result.metric_stderr or 0.0,
                **{f"time_{k}_s": v for k, v in result.timings.items()}}
    if not result.completed or result.latency is None:
        return {}
    lat = result.latency
    values = {metric_name: result.metric, "latency_ms": lat.median_ms, "latency_p90_ms": lat.p90_ms,
              "latency_cv": lat.cv, "size_mb": result.size_mb, **{f"latency_{k}_ms": v for k, v in lat.phases.items()}}
    values.update(result.extra_metrics)
    values.update({k: v for k, v in result.model_stats.items()
                   if isinstance(v, (int, float)) and v == v})  # MACs/params ratios, recovery cost
    values.update({f"time_{k}_s": v for k, v in result.timings.items()})
    values.update({f"peak_rss_{k}_mb": v for k, v in result.memory.items()})
    values["peak_rss_driver_mb"] = peak_rss_mb()  # the driver's, since it started
    return values
