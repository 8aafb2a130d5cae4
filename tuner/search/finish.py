"""What runs around the loop once trials are measured: the noise floor and the front race, the latency model's
check, the front re-timed with no build running, and the failures counted."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from tuner.core.paths import MODEL
from tuner.core.records import StudyMeta, TrialMeta, TrialResult
from tuner.executors.base import Executor, Retime
from tuner.experiment import Experiment
from tuner.results.tracking import MlflowRecorder
from tuner.search.loop import (
    failed_trials,
)
from tuner.space import SearchSpace


def measure_noise(study: optuna.Study, executor: Executor, feeds: Callable[[Path], dict], experiment: Experiment, baseline: TrialResult,
                  log: Callable[[str], None]) -> None:
    """Time the baseline's artifact several times in a row on the study's meter; store and print the spread."""
    from tuner.search.racing import measure_noise_floor

    path = Path(baseline.artifact_dir or experiment.paths.artifact(baseline.key)) / MODEL
    if not path.is_file():
        return
    floor = measure_noise_floor(executor, path, feeds(path),
                                dict(baseline.environment))
    if floor is not None:
        replace(StudyMeta.load(study), noise_floor_ms=floor.medians_ms).save(study)
        log(floor.line())


def front_race(study: optuna.Study, executor: Executor, feeds: Callable[[Path], dict], experiment: Experiment,
               log: Callable[[str], None]) -> list:
    """The loop's refiners: the front race, when the experiment races and the noise floor is known."""
    from tuner.search.racing import FrontRace, NoiseFloor

    medians = StudyMeta.load(study).noise_floor_ms
    if not experiment.racing or len(medians) < 2:
        return []
    return [FrontRace(executor, experiment.paths.artifacts,
                      feeds, NoiseFloor(medians),
                      log)]


def failure_reasons(study: optuna.Study) -> dict[str, int]:
    """How many trials failed for each reason (its first line), most frequent first."""
    reasons = [(TrialMeta.of(t).fail_reason or "").splitlines()[0][:200] for t in failed_trials(study)]
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def latency_model_check(study: optuna.Study, space: SearchSpace, feeds: Callable[[Path], dict], experiment: Experiment,
                        recorder: MlflowRecorder, trial_runs: dict[int, str], log: Callable[[str], None]):
    """Fit the per-layer latency model from the reference trials and check it on the others
    (:mod:`tuner.latency_check`). A model that cannot be fitted is reported, never fatal: the study is done."""
    from tuner.search.latency_check import check_latency_model

    try:
        check, predicted = check_latency_model(
            study, space, experiment.run_dir,
            feeds, experiment.latency.threads)
    except Exception as exc:  # noqa: BLE001  (a report; the trials are recorded already)
        log(f"latency model not fitted: {type(exc).__name__}: {exc}")
        return None
    for number, ms in predicted.items():
        if number in trial_runs:
            recorder.client.log_metric(trial_runs[number], "latency_predicted_ms", ms)
    recorder.log_study_metrics({f"latency_model_{k}": v for k, v in (
        ("median_error", check.median_error), ("p90_error", check.p90_error),
        ("rank_correlation", check.rank_correlation)) if v == v})
    return check


def recheck_front_latency(study: optuna.Study, executor: Executor, feeds: Callable[[Path], dict], experiment: Experiment,
                          recorder: MlflowRecorder, trial_runs: dict[int, str]) -> dict[str, Any]:
    """Once no build runs, time the front again where it was timed and compare with the latency measured
    while the study was busy. The study's values stay as measured (the front is what its trials gave); the
    re-check goes to the study's attributes and to MLflow (``latency_alone_ms`` on the trial runs)."""

    front = {t.number: t for t in study.best_trials}
    models = {n: experiment.paths.model(TrialMeta.of(t).key) for n, t in front.items()}
    models = {n: path for n, path in models.items() if path.is_file()}
    if not models:
        return {}
    feeds = feeds(next(iter(models.values())))
    alone = executor.retime([Retime(n, path, TrialMeta.of(front[n]).environment) for n, path in models.items()],
                            feeds)
    if not alone:
        return {}
    for number, latency in alone.items():
        if number in trial_runs:
            recorder.client.log_metric(trial_runs[number], "latency_alone_ms", latency.median_ms)
    ratios = sorted(front[n].values[1] / latency.median_ms for n, latency in alone.items())
    check = {"front_trials": len(models), "retimed": len(ratios), "median_ratio": statistics.median(ratios),
             "min_ratio": ratios[0], "max_ratio": ratios[-1],
             "latency_alone_ms": {str(n): latency.median_ms for n, latency in alone.items()}}
    replace(StudyMeta.load(study), latency_check=check).save(study)
    recorder.client.log_metric(recorder.parent_run_id, "latency_check_median_ratio", check["median_ratio"])
    return check
