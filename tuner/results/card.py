"""What a picked model's files say of it, whichever runtime built it: its metrics against the fp32 baseline and
its per-layer choices (the model card's tables)."""

from __future__ import annotations

from typing import Any

from tuner.core.records import ArtifactRecord, StudyMeta, TrialMeta
from tuner.results.front import FrontRow


def row_metrics(row: FrontRow, metric_name: str, trial_meta: TrialMeta) -> dict[str, float]:
    return {metric_name: row.metric, "latency_ms": row.latency_ms, "latency_p90_ms": row.latency_p90_ms,
            "size_mb": row.size_mb, "speedup": row.speedup, **trial_meta.extra_metrics}


def baseline_metrics(meta: StudyMeta) -> dict[str, float]:
    return {meta.metric_name: meta.baseline_metric, "latency_ms": meta.baseline_latency_ms}


def score_table(record: ArtifactRecord, metric_name: str) -> list[str]:
    """The card's title and its table of metrics against the fp32 baseline."""
    m, base = record.metrics, record.baseline
    lines = [
        f"# {record.study} — trial {record.trial}",
        "",
        f"Picked from the Pareto front of study `{record.study}` by `tuner pick`. Choices: {record.summary}.",
        "",
        "| | this model | fp32 baseline |",
        "|---|---|---|",
        f"| {metric_name} | {m[metric_name]:.4f} | {base[metric_name]:.4f} |",
        f"| latency (median, ms) | {m['latency_ms']:.3f} | {base['latency_ms']:.3f} |",
        f"| latency p90 (ms) | {m['latency_p90_ms']:.3f} | |",
        f"| speedup | {m['speedup']:.2f}x | 1.00x |",
        f"| size (MB) | {m['size_mb']:.3f} | |",
    ]
    return lines + [f"| {k} | {v:.4f} | |" for k, v in m.items()
                    if k not in (metric_name, "latency_ms", "latency_p90_ms", "speedup", "size_mb")]


def choices_table(cand: dict) -> list[str]:
    """The card's per-layer precision and pruning tables."""
    precision, lines = cand.get("precision", {}), []
    if precision:
        lines += ["## Per-layer choices", "", "| layer | precision |", "|---|---|"]
        lines += [f"| {layer} | {choice} |" for layer, choice in precision.items()]
        pruned = {g: r for g, r in cand.get("prune", {}).items() if r > 0}
        if pruned:
            lines += ["", "| pruning group | ratio removed |", "|---|---|"]
            lines += [f"| {g} | {r:.3f} |" for g, r in pruned.items()]
        if cand.get("fusions"):
            lines += ["", f"Transformer fusions applied before quantization: {', '.join(cand['fusions'])}."]
    return lines


def tag_version(client, name: str, version: str, tags: dict[str, str], alias: str | None) -> dict[str, Any]:
    """Tag a registered model version (values cut to MLflow's 5000 characters), point ``alias`` at it; returns
    the record's ``registered_model``."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return {"name": name, "version": version, "alias": alias}
