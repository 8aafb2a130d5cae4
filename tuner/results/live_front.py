"""The study's front, computed once from the trials and written out: CSV tables, plots and hypervolume in the
run directory and the MLflow parent run; at the end, front tags and models on the trial runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from tuner.core.paths import RunPaths
from tuner.core.records import StudyMeta, TrialMeta
from tuner.results.front import (
    FrontRow,
    completed_rows,
    front_rows,
    hypervolume,
    write_csv,
)
from tuner.results.plots import layer_rows, plot_front, plot_front_html, plot_layers
from tuner.results.tracking import MlflowRecorder

FRONT_FILES = ("pareto.csv", "references.csv", "pareto.png", "pareto.html", "front_layers.png")


def front_hypervolume(front: list[FrontRow], rows: list[FrontRow], meta: StudyMeta) -> float:
    """Area of (latency, metric) the front dominates up to the fp32 latency and the metric constraint (or the
    worst metric among ``rows``, without one); 0 with nothing completed."""
    if not rows:
        return 0.0
    threshold = meta.metric_threshold()
    worst = -meta.score(threshold) if threshold is not None else max(-r.score(meta.maximize) for r in rows)
    return hypervolume([(r.latency_ms, -r.score(meta.maximize)) for r in front], (meta.baseline_latency_ms, worst))


def publish_front(study: optuna.Study, recorder: MlflowRecorder, run_dir: Path, step: int,
                  readable: Callable[[dict[str, Any]], dict[str, Any]] = dict):
    """Compute the front once; write its table, plots and hypervolume to the run directory and MLflow.
    ``readable`` turns a trial's parameters into the choices they stand for (`SearchSpace.readable`)."""
    meta = StudyMeta.load(study)
    metric_name = meta.metric_name
    front = front_rows(study)
    rows = completed_rows(study)
    by_trial = {r.trial: r for r in rows}
    references = {}
    for trial in study.get_trials(deepcopy=False):
        label = TrialMeta.of(trial).reference
        if label and trial.number in by_trial:
            references[label] = by_trial[trial.number]
    threshold = meta.metric_threshold()
    write_csv(front, run_dir / "pareto.csv", metric_name)
    write_csv(list(references.values()), run_dir / "references.csv", metric_name)
    plot_front(rows, front, metric_name, run_dir / "pareto.png", references, threshold)
    plot_front_html(rows, front, metric_name, run_dir / "pareto.html", references, threshold)
    params_of = {r.trial: readable(study.trials[r.trial].params) for r in front}
    plot_layers(layer_rows(front, params_of), metric_name, {r.trial: r.metric for r in front},
                run_dir / "front_layers.png")
    hv = front_hypervolume(front, rows, meta)
    files = [run_dir / name for name in FRONT_FILES if (run_dir / name).is_file()]
    recorder.log_front(files, {"front_size": len(front), "hypervolume": hv}, step=step)
    return front, references


def finish_front(study: optuna.Study, recorder: MlflowRecorder, trial_runs: dict[int, str], run_dir: Path,
                 readable: Callable[[dict[str, Any]], dict[str, Any]] = dict):
    """The front once more at the end: files, ``tuner.pareto`` tags, front models attached, a study summary."""
    meta = StudyMeta.load(study)
    if not meta.has_baseline:
        return [], []
    n_finished = len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    front, references = publish_front(study, recorder, run_dir, n_finished, readable)
    models = {}
    for r in front:
        path = RunPaths(run_dir).model(r.key)
        if path.is_file():
            models[r.trial] = path
    recorder.mark_front(trial_runs, {r.trial for r in front}, models)
    recorder.set_note(front_note(study.study_name, meta, front, list(references.values()), trial_runs,
                                 recorder.experiment_id))
    summary = {"baseline_" + meta.metric_name: meta.baseline_metric, "baseline_latency_ms": meta.baseline_latency_ms}
    if front:
        summary["best_speedup"] = max(r.speedup for r in front)
    recorder.log_summary(summary)
    return front, list(references.values())


def front_note(name: str, meta: StudyMeta, front: list[FrontRow], references: list[FrontRow],
               trial_runs: dict[int, str], experiment_id: str) -> str:
    """The study run's description in the MLflow UI (markdown): the front with links to its trial runs, the
    references, the constraint and what to run next."""
    metric = meta.metric_name
    sign = ">=" if meta.maximize else "<="
    threshold = meta.metric_threshold()
    constraint = (f"{metric} {sign} {threshold:.4f} (fp32 {meta.baseline_metric:.4f}, at most "
                  f"{meta.max_metric_drop:g} worse)" if threshold is not None else "none")

    def table(rows: list[FrontRow], label: str) -> list[str]:
        lines = [f"| {label} | {metric} | latency ms | speedup | size MB | choices |", "|---|---|---|---|---|---|"]
        for r in rows:
            run = trial_runs.get(r.trial)
            name_ = f"{r.reference} trial {r.trial}".strip()
            cell = f"[{name_}](#/experiments/{experiment_id}/runs/{run})" if run else name_
            speedup = f"{r.speedup:.2f}x" if r.speedup else "-"
            lines.append(f"| {cell} | {r.metric:.4f} | {r.latency_ms:.3f} | {speedup} | "
                         f"{(r.size_mb or 0):.2f} | {r.summary} |")
        return lines

    parts = [f"## Pareto front of study `{name}`: {len(front)} models", "",
             f"fp32 baseline: {metric} {meta.baseline_metric:.4f}, {meta.baseline_latency_ms:.3f} ms. "
             f"Constraint: {constraint}. Each trial links to its run; front runs carry their model file.", ""]
    parts += table(front, "trial") if front else ["No trial meets the constraint yet."]
    if references:
        parts += ["", "### References (measured in the same study)", ""] + table(references, "reference")
    pick = f"tuner pick {name} --min-{metric} {threshold:.4f}" if threshold is not None else f"tuner pick {name} --knee"
    parts += ["", "### Next", "", f"- list the front: `tuner front {name}`",
              f"- pick a model: `{pick} --out model/` (add `--register NAME` for the Model Registry)",
              f"- rebuild and re-measure it: `tuner verify {name} --front`",
              f"- more trials: `tuner resume {name} --trials N`"]
    return "\n".join(parts)
