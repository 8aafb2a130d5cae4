"""The Pareto front as plain rows (computed once), then rendered: terminal table, CSV, plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.core.records import StudyMeta, TrialMeta

COLUMNS = ("trial", "metric", "latency_ms", "latency_p90_ms", "speedup", "size_mb", "summary", "key")


def trial_row(trial: FrozenTrial, metric_name: str, baseline_latency: float | None) -> dict[str, Any]:
    """One completed trial as a table row (the metric's column is named after it)."""
    meta = TrialMeta.of(trial)
    latency = trial.values[1]
    return {
        "trial": trial.number,
        metric_name: trial.values[0],
        "latency_ms": latency,
        "latency_p90_ms": meta.latency_p90_ms,
        "speedup": (baseline_latency / latency) if baseline_latency else None,
        "size_mb": meta.size_mb,
        "macs_ratio": meta.model_stats.get("macs_ratio"),
        **meta.extra_metrics,
        "reference": meta.reference,
        "summary": meta.summary,
        "key": meta.key,
        "mlflow_run_id": meta.mlflow_run_id,
    }


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Feasible Pareto-optimal trials, fastest first (Optuna computes the front and the constraints)."""
    meta = StudyMeta.load(study)
    rows = [trial_row(t, meta.metric_name, meta.baseline_latency_ms) for t in study.best_trials]
    return sorted(rows, key=lambda r: r["latency_ms"])


def completed_rows(study: optuna.Study) -> list[dict[str, Any]]:
    meta = StudyMeta.load(study)
    return [trial_row(t, meta.metric_name, meta.baseline_latency_ms)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def format_table(rows: Sequence[dict[str, Any]], metric_name: str) -> str:
    header = f"{'trial':>5}  {metric_name:>10}  {'latency_ms':>10}  {'p90_ms':>8}  {'speedup':>7}  {'size_mb':>7}  choices"
    lines = [header, "-" * len(header)]
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(f"{r['trial']:>5}  {r[metric_name]:>10.4f}  {r['latency_ms']:>10.3f}  "
                     f"{(r['latency_p90_ms'] or 0):>8.3f}  {speedup:>7}  {(r['size_mb'] or 0):>7.3f}  {r['summary']}")
    return "\n".join(lines)


_BASE_FIELDS = {"trial", "latency_ms", "latency_p90_ms", "speedup", "size_mb", "macs_ratio", "reference", "summary",
                "key", "mlflow_run_id"}


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, metric_name: str) -> None:
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in _BASE_FIELDS and k != metric_name]
    fields = ["trial", metric_name, *extra, "latency_ms", "latency_p90_ms", "speedup", "macs_ratio", "size_mb",
              "reference", "summary", "key", "mlflow_run_id"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_front(all_rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], metric_name: str,
               path: str | Path, references: dict[str, dict[str, Any]] | None = None,
               threshold: float | None = None) -> None:
    """Scatter of every completed trial, the front as a step line, labelled references, the feasibility line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r["latency_ms"] for r in all_rows], [r[metric_name] for r in all_rows], s=14, color="#9aa5b1",
               label="trials")
    ax.step([r["latency_ms"] for r in front], [r[metric_name] for r in front], where="post", color="#d9480f")
    ax.scatter([r["latency_ms"] for r in front], [r[metric_name] for r in front], s=30, color="#d9480f",
               label="Pareto front", zorder=3)
    for label, row in (references or {}).items():
        ax.scatter([row["latency_ms"]], [row[metric_name]], marker="x", s=60, color="black", zorder=4)
        ax.annotate(label, (row["latency_ms"], row[metric_name]), textcoords="offset points", xytext=(5, -12))
    if threshold is not None:
        ax.axhline(threshold, color="#d9480f", linestyle=":", linewidth=1, label="metric constraint")
    ax.set_xlabel("latency (ms, median, ONNX Runtime CPU)")
    ax.set_ylabel(metric_name)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
