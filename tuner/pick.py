"""Pick a Pareto model by constraint, write it out, register it in the MLflow Model Registry."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import optuna


class PickError(ValueError):
    """No front member meets the constraint (the message says what the front offers)."""


def choose(front: list[dict[str, Any]], metric_name: str, maximize: bool, min_metric: float | None = None,
           max_latency_ms: float | None = None) -> dict[str, Any]:
    """Fastest member meeting ``min_metric``, or the best-scoring member meeting ``max_latency_ms``."""
    if (min_metric is None) == (max_latency_ms is None):
        raise ValueError("give exactly one of min_metric and max_latency_ms.")
    if not front:
        raise PickError("the study has no feasible Pareto front yet.")
    if min_metric is not None:
        ok = [r for r in front if (r[metric_name] >= min_metric if maximize else r[metric_name] <= min_metric)]
        if not ok:
            best = max(front, key=lambda r: r[metric_name] if maximize else -r[metric_name])
            raise PickError(f"no front member has {metric_name} {'>=' if maximize else '<='} {min_metric}; "
                            f"the best is {best[metric_name]:.4f} (trial {best['trial']}).")
        return min(ok, key=lambda r: r["latency_ms"])
    ok = [r for r in front if r["latency_ms"] <= max_latency_ms]
    if not ok:
        fastest = min(front, key=lambda r: r["latency_ms"])
        raise PickError(f"no front member has latency <= {max_latency_ms} ms; the fastest is "
                        f"{fastest['latency_ms']:.3f} ms (trial {fastest['trial']}).")
    return max(ok, key=lambda r: r[metric_name] if maximize else -r[metric_name])


def export_pick(study: optuna.Study, row: dict[str, Any], out_dir: str | Path, tracking_uri: str | None,
                register_as: str | None) -> dict[str, Any]:
    """Download the member's ``model.onnx`` from its MLflow trial run, write ``candidate.json``, register it."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    import onnx
    from mlflow.tracking import MlflowClient

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = row["mlflow_run_id"]
    local = client.download_artifacts(run_id, "model.onnx", str(out_dir / ".download"))
    shutil.move(local, out_dir / "model.onnx")
    shutil.rmtree(out_dir / ".download", ignore_errors=True)
    trial = study.trials[row["trial"]]
    metric_name = study.user_attrs["metric_name"]
    model = onnx.load(str(out_dir / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    record = {
        "study": study.study_name,
        "trial": row["trial"],
        "mlflow_run_id": run_id,
        "key": row["key"],
        "metrics": {metric_name: row[metric_name], "latency_ms": row["latency_ms"],
                    "latency_p90_ms": row["latency_p90_ms"], "size_mb": row["size_mb"], "speedup": row["speedup"]},
        "runtime": {**json.loads(props.get("tuner.runtime", json.dumps({"opt_level": props.get("tuner.opt_level")}))),
                    "provider": "CPUExecutionProvider"},
        "candidate": json.loads(props["tuner.candidate"]),
        "params": trial.params,
    }
    (out_dir / "candidate.json").write_text(json.dumps(record, indent=2))
    if register_as:
        mlflow.set_tracking_uri(client.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.onnx.log_model(model, name="model", registered_model_name=register_as)
        record["registered_model"] = {"name": register_as, "version": info.registered_model_version}
    return record
