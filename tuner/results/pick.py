"""Pick a Pareto model by constraint, write it out, register it in the MLflow Model Registry."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna

from tuner.core.errors import PickError
from tuner.core.paths import TORCH_MODULE, TORCH_PACKAGE
from tuner.core.records import ArtifactRecord, StudyMeta, TrialMeta
from tuner.core.vocab import ORT_LEVELS
from tuner.results.card import (
    baseline_metrics,
    choices_table,
    row_metrics,
    score_table,
    tag_version,
)
from tuner.results.front import FrontRow


def choose(front: list[FrontRow], metric_name: str, maximize: bool, min_metric: float | None = None,
           max_latency_ms: float | None = None, max_size_mb: float | None = None, knee: bool = False
           ) -> FrontRow:
    """Pick one front member.

    Constraints (``min_metric``, ``max_latency_ms``, ``max_size_mb``) filter; then, with a latency budget the
    best-scoring member wins, otherwise the fastest; ``knee`` picks the member farthest from the line joining
    the filtered front's extremes (the point past which speed costs the most metric).
    """
    if min_metric is None and max_latency_ms is None and max_size_mb is None and not knee:
        raise ValueError("give a constraint or knee=True.")
    if not front:
        raise PickError("the study has no feasible Pareto front yet.")
    ok = list(front)
    def better(r: FrontRow) -> float:
        return r.score(maximize)
    if min_metric is not None:
        ok = [r for r in ok if better(r) >= (min_metric if maximize else -min_metric)]
        if not ok:
            best = max(front, key=better)
            raise PickError(f"no front member has {metric_name} {'>=' if maximize else '<='} {min_metric}; "
                            f"the best is {best.metric:.4f} (trial {best.trial}).")
    others = " meeting the other constraints" if len(ok) < len(front) else ""
    if max_size_mb is not None:
        ok = _at_most(ok, "size_mb", max_size_mb, f"no front member{others} is at most {max_size_mb} MB; "
                      "the smallest is {value:.3f} MB (trial {trial}).")
    if max_latency_ms is not None:
        others = " meeting the other constraints" if len(ok) < len(front) else ""
        ok = _at_most(ok, "latency_ms", max_latency_ms, f"no front member{others} has latency <= {max_latency_ms} "
                      "ms; the fastest is {value:.3f} ms (trial {trial}).")
    if knee:
        return knee_point(ok, metric_name, maximize)
    if max_latency_ms is not None:
        return max(ok, key=better)
    return min(ok, key=lambda r: r.latency_ms)


def _at_most(rows: list[FrontRow], key: str, limit: float, message: str) -> list[FrontRow]:
    """Rows whose field ``key`` is <= ``limit``; none is a PickError naming the closest row (``message``
    template)."""
    kept = [r for r in rows if getattr(r, key) is not None and getattr(r, key) <= limit]
    if not kept:
        closest = min((r for r in rows if getattr(r, key) is not None), key=lambda r: getattr(r, key))
        raise PickError(message.format(value=getattr(closest, key), trial=closest.trial))
    return kept


def knee_point(rows: list[FrontRow], metric_name: str, maximize: bool) -> FrontRow:
    """The member farthest from the straight line between the fastest and the best-scoring member, with both
    axes scaled to [0, 1]; with one or two members, the fastest."""
    rows = sorted(rows, key=lambda r: r.latency_ms)
    if len(rows) < 3:
        return rows[0]
    lat = np.array([r.latency_ms for r in rows], dtype=float)
    met = np.array([r.score(maximize) for r in rows], dtype=float)
    x = (lat - lat.min()) / (np.ptp(lat) or 1.0)
    y = (met - met.min()) / (np.ptp(met) or 1.0)
    (x0, y0), (x1, y1) = (x[0], y[0]), (x[-1], y[-1])
    distance = np.abs((y1 - y0) * x - (x1 - x0) * y + x1 * y0 - y1 * x0) / np.hypot(x1 - x0, y1 - y0)
    return rows[int(np.argmax(distance))]


def export_pick(study: optuna.Study, row: FrontRow, out_dir: str | Path, tracking_uri: str | None,
                register_as: str | None, alias: str | None = None) -> ArtifactRecord:
    """Download the member's ``model.onnx`` from its MLflow trial run; write ``candidate.json`` and
    ``MODEL_CARD.md``; optionally register it (with metrics, candidate and card) and set an alias."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    import onnx
    from mlflow.tracking import MlflowClient

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = row.mlflow_run_id
    names = {f.path for f in client.list_artifacts(run_id)}
    torch_file = next((name for name in (TORCH_PACKAGE, TORCH_MODULE) if name in names), None)
    if torch_file is not None:  # built by PyTorch's runtime
        from tuner.results.pick_torch import export_torch_pick

        return export_torch_pick(client, study, row, out_dir, torch_file, register_as, alias)
    local = client.download_artifacts(run_id, "model.onnx", str(out_dir / ".download"))
    shutil.move(local, out_dir / "model.onnx")
    shutil.rmtree(out_dir / ".download", ignore_errors=True)
    trial = study.trials[row.trial]
    meta, trial_meta = StudyMeta.load(study), TrialMeta.of(trial)
    metric_name = meta.metric_name
    model = onnx.load(str(out_dir / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    runtime = json.loads(props.get("tuner.runtime", json.dumps({"opt_level": props.get("tuner.opt_level")})))
    record = ArtifactRecord(
        json.loads(props["tuner.candidate"]), key=row.key, study=study.study_name, trial=row.trial,
        mlflow_run_id=run_id, artifact_sha256=trial_meta.artifact_sha256, summary=row.summary,
        metrics=row_metrics(row, metric_name, trial_meta), baseline=baseline_metrics(meta),
        runtime={**runtime, "provider": "CPUExecutionProvider"}, environment=trial_meta.environment,
        params=trial.params)
    record.write(out_dir / "candidate.json")
    (out_dir / "MODEL_CARD.md").write_text(model_card(record, metric_name))
    if register_as:
        mlflow.set_tracking_uri(client.tracking_uri)
        import onnxruntime as ort

        level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[runtime["opt_level"]])
        session_options = {"graph_optimization_level": int(level),
                           "intra_op_num_threads": record.environment.get("threads", 1)}
        with mlflow.start_run(run_id=run_id):
            info = mlflow.onnx.log_model(
                model, name="model", registered_model_name=register_as, onnx_session_options=session_options,
                onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False,
                extra_files=[str(out_dir / "candidate.json"), str(out_dir / "MODEL_CARD.md")],
                metadata={"tuner_summary": row.summary, "tuner_runtime": runtime})
        version = info.registered_model_version
        tags = {"tuner.study": study.study_name, "tuner.trial": str(row.trial), "tuner.summary": row.summary,
                "tuner.artifact_sha256": record.artifact_sha256 or ""}
        tags.update({f"metric.{k}": f"{v:.6g}" for k, v in record.metrics.items() if isinstance(v, (int, float))})
        record = replace(record, registered_model=tag_version(client, register_as, version, tags, alias))
    return record


def model_card(record: ArtifactRecord, metric_name: str) -> str:
    """A short Markdown card: what the model is, how it scored and ran, on what, and how to load it."""
    env, runtime = record.environment, record.runtime
    cand = record.candidate
    off = runtime.get("disabled_optimizers") or []
    lines = score_table(record, metric_name) + [
        "",
        f"Measured with ONNX Runtime {env.get('onnxruntime', '?')} on {env.get('cpu', '?')} "
        f"({env.get('cores', '?')} cores, flags {', '.join(env.get('cpu_flags', [])) or '?'}), "
        f"{env.get('threads', '?')} intra-op thread(s), host `{env.get('host', '?')}`; "
        f"model.onnx sha256 `{record.artifact_sha256}`.",
        "",
        "## Load it",
        "",
        "```python",
        "from tuner.measure.runtime import load_artifact           # reads level and optimizers from the file",
        "session = load_artifact('model.onnx')",
        "# or plain onnxruntime:",
        "import onnxruntime as ort",
        "options = ort.SessionOptions()",
        f"options.graph_optimization_level = ort.GraphOptimizationLevel.{ORT_LEVELS[runtime['opt_level']]}",
        f"options.intra_op_num_threads = {env.get('threads', 1)}",
        "session = ort.InferenceSession('model.onnx', options, providers=['CPUExecutionProvider']"
        + (f", disabled_optimizers={off!r})" if off else ")"),
        "```",
        "",
    ]
    if off:
        lines += ["MLflow's ONNX pyfunc cannot pass `disabled_optimizers`; load the file as above to run it exactly "
                  "as measured.", ""]
    return "\n".join(lines + choices_table(cand)) + "\n"
