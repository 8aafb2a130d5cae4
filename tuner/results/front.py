"""The Pareto front as typed rows (computed once), then rendered: terminal table, CSV; and its hypervolume."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.core.records import StudyMeta, TrialMeta


@dataclass(frozen=True)
class FrontRow:
    """One completed trial as the front, the references, `tuner front` and `tuner pick` show it."""

    trial: int
    metric: float  # the task's metric (its name is the study's `metric_name`)
    latency_ms: float
    latency_p90_ms: float | None = None
    speedup: float | None = None  # over the fp32 baseline's latency
    size_mb: float | None = None
    macs_ratio: float | None = None
    extra_metrics: Mapping[str, float] = field(default_factory=dict)
    reference: str = ""  # the reference label ("fp32", "uniform int8", ...), or ""
    stage: str = ""  # where the trial came from: reference, plan, seed or sampler
    summary: str = ""
    key: str = ""
    mlflow_run_id: str | None = None

    def score(self, maximize: bool) -> float:
        """The metric with higher better, whichever way it points."""
        return self.metric if maximize else -self.metric

    def csv_fields(self, metric_name: str) -> dict[str, Any]:
        """The row as CSV columns: the metric's column is named after it, extra metrics beside it."""
        return {"trial": self.trial, metric_name: self.metric, **self.extra_metrics, "latency_ms": self.latency_ms,
                "latency_p90_ms": self.latency_p90_ms, "speedup": self.speedup, "macs_ratio": self.macs_ratio,
                "size_mb": self.size_mb, "reference": self.reference, "stage": self.stage, "summary": self.summary, "key": self.key,
                "mlflow_run_id": self.mlflow_run_id}


def trial_row(trial: FrozenTrial, baseline_latency: float | None) -> FrontRow:
    """One completed trial as a table row."""
    meta = TrialMeta.of(trial)
    latency = trial.values[1]
    return FrontRow(trial.number, trial.values[0], latency, meta.latency_p90_ms,
                    (baseline_latency / latency) if baseline_latency else None, meta.size_mb,
                    meta.model_stats.get("macs_ratio"), dict(meta.extra_metrics), meta.reference, meta.origin,
                    meta.summary, meta.key, meta.mlflow_run_id)


def front_rows(study: optuna.Study) -> list[FrontRow]:
    """Feasible Pareto-optimal trials, fastest first (Optuna computes the front and the constraints)."""
    baseline = StudyMeta.load(study).baseline_latency_ms
    return sorted((trial_row(t, baseline) for t in study.best_trials), key=lambda r: r.latency_ms)


def completed_rows(study: optuna.Study) -> list[FrontRow]:
    baseline = StudyMeta.load(study).baseline_latency_ms
    return [trial_row(t, baseline) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def format_table(rows: Sequence[FrontRow], metric_name: str) -> str:
    header = f"{'trial':>5}  {metric_name:>10}  {'latency_ms':>10}  {'p90_ms':>8}  {'speedup':>7}  {'size_mb':>7}  {'stage':>9}  choices"
    lines = [header, "-" * len(header)]
    for r in rows:
        speedup = f"{r.speedup:.2f}x" if r.speedup else "-"
        lines.append(f"{r.trial:>5}  {r.metric:>10.4f}  {r.latency_ms:>10.3f}  "
                     f"{(r.latency_p90_ms or 0):>8.3f}  {speedup:>7}  {(r.size_mb or 0):>7.3f}  {r.stage:>9}  {r.summary}")
    return "\n".join(lines)


def write_csv(rows: Sequence[FrontRow], path: str | Path, metric_name: str) -> None:
    extra = list(dict.fromkeys(k for r in rows for k in r.extra_metrics))
    fields = ["trial", metric_name, *extra, "latency_ms", "latency_p90_ms", "speedup", "macs_ratio", "size_mb",
              "reference", "stage", "summary", "key", "mlflow_run_id"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r.csv_fields(metric_name) for r in rows)


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both coordinates minimized) up to ``reference``, in 2-D."""
    inside = sorted((a, b) for a, b in points if a < reference[0] and b < reference[1])
    area, best_b = 0.0, reference[1]
    for i, (a, b) in enumerate(inside):
        best_b = min(best_b, b)
        next_a = inside[i + 1][0] if i + 1 < len(inside) else reference[0]
        area += (next_a - a) * (reference[1] - best_b)
    return area
