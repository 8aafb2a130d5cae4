"""`tuner verify`: rebuild or reload a trial's artifact in a fresh process, re-score and re-time it, compare.

The fresh process runs the same evaluator the workers ran: it reloads ``artifacts/<key>/model.onnx`` when the
run directory still has it and rebuilds it from the trial's candidate otherwise. What must hold: the metric is
reproduced exactly (same file, same session settings, same inputs) and the file hash matches; latency on the
same machine should agree within a few percent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tuner.core.errors import StudyError
from tuner.core.paths import RunPaths
from tuner.core.records import ArtifactRecord, StudyMeta, TrialMeta, TrialResult
from tuner.core.storage import load_finished_study


def verify(study_name: str, trial_number: int, output_dir: str | Path = "tuner-runs",
           tracking_uri: str | None = None, timeout_s: float = 1800) -> dict[str, Any]:
    study = load_finished_study(study_name, output_dir)
    if not 0 <= trial_number < len(study.trials):
        raise StudyError(f"study {study_name!r} has no trial {trial_number} (it has {len(study.trials)}).")
    trial = study.trials[trial_number]
    if trial.state.name != "COMPLETE":
        raise StudyError(f"trial {trial_number} of {study_name!r} is {trial.state.name}; only COMPLETE trials "
                         "have an artifact to verify.")
    meta, trial_meta = StudyMeta.load(study), TrialMeta.of(trial)
    if meta.task_ref is None:
        raise StudyError(f"study {study_name!r} predates `tuner verify` (no task reference stored).")
    run_dir = Path(output_dir) / study_name
    key = trial_meta.key
    candidate_file = RunPaths(run_dir).artifact(key) / "candidate.json"
    candidate = ArtifactRecord.read(candidate_file).candidate if candidate_file.is_file() else \
        _candidate_from_mlflow(trial_meta.mlflow_run_id, tracking_uri or meta.tracking_uri)
    job = {"task_ref": dict(meta.task_ref), "settings": dict(meta.eval_settings),
           "artifact_root": str(RunPaths(run_dir).artifacts), "candidate": dict(candidate)}
    proc = subprocess.run([sys.executable, "-m", "tuner.results.verify", json.dumps(job)], capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"the verifying process failed: {proc.stderr[-2000:]}")
    fresh = TrialResult.from_dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not fresh.completed:
        raise RuntimeError(f"trial {trial_number} no longer builds or runs: {fresh.error}")
    recorded_env = trial_meta.environment
    return {
        "study": study_name, "trial": trial_number, "key": key,
        "rebuilt": not fresh.cached_build,
        "metric_name": meta.metric_name,
        "metric": {"recorded": trial.values[0], "now": fresh.metric, "diff": fresh.metric - trial.values[0]},
        "latency_ms": {"recorded": trial.values[1], "now": fresh.latency.median_ms,
                       "ratio": fresh.latency.median_ms / trial.values[1]},
        "artifact_sha256": {"recorded": trial_meta.artifact_sha256, "now": fresh.artifact_sha256,
                            "same": trial_meta.artifact_sha256 == fresh.artifact_sha256},
        "environment_changes": {k: {"recorded": recorded_env.get(k), "now": v}
                                for k, v in fresh.environment.items() if recorded_env.get(k) != v},
    }


def _candidate_from_mlflow(run_id: str | None, tracking_uri: str | None) -> dict[str, Any]:
    """The candidate of a trial whose artifact directory is gone, from its MLflow trial run."""
    if not run_id:
        raise StudyError("the artifact is gone from the run directory and the trial has no MLflow run to rebuild from.")
    import os
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        path = MlflowClient(tracking_uri).download_artifacts(run_id, "candidate.json", tmp)
        return ArtifactRecord.read(path).candidate


def format_report(report: dict[str, Any]) -> str:
    m, lat, sha = report["metric"], report["latency_ms"], report["artifact_sha256"]
    lines = [
        f"study {report['study']!r} trial {report['trial']} (artifact {report['key']}, "
        f"{'rebuilt' if report['rebuilt'] else 'reloaded'} in a fresh process)",
        f"  {report['metric_name']:<12} recorded {m['recorded']:.6f}  now {m['now']:.6f}  diff {m['diff']:+.2e}"
        + ("  (exact)" if m["diff"] == 0 else ""),
        f"  {'latency_ms':<12} recorded {lat['recorded']:.4f}  now {lat['now']:.4f}  ratio {lat['ratio']:.3f}",
        f"  {'model file':<12} sha256 {'same' if sha['same'] else 'DIFFERENT'} ({(sha['now'] or '')[:16]})",
    ]
    changes = report["environment_changes"]
    lines.append("  environment: " + ("unchanged" if not changes else
                                      "; ".join(f"{k}: {v['recorded']} -> {v['now']}" for k, v in changes.items())))
    return "\n".join(lines)


def _worker(job_json: str) -> None:
    from tuner.evaluate_torch import evaluator_class
    from tuner.experiment import EvalSettings
    from tuner.taskref import TaskRef

    job = json.loads(job_json)
    ref = TaskRef(job["task_ref"]["spec"], job["task_ref"]["args"], job["task_ref"]["base_dir"])
    settings = EvalSettings(**job["settings"])
    evaluator = evaluator_class(settings)(ref, settings, job["artifact_root"])
    print(json.dumps(evaluator.evaluate(job["candidate"]).to_dict()))


if __name__ == "__main__":
    _worker(sys.argv[1])
