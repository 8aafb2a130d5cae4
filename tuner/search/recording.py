"""The study's MLflow glue: its parent run, the inputs logged on it, one trial run per finished trial, and trials
left RUNNING by a driver that died."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from tuner.core.records import StudyMeta, TrialMeta
from tuner.experiment import Experiment
from tuner.results.tracking import MlflowRecorder
from tuner.search.loop import (
    requeue,
    tell,
)
from tuner.space import SearchSpace


def open_recorder(study: optuna.Study, experiment: Experiment, tracking_uri: str | None) -> MlflowRecorder:
    """The study's MLflow parent run. A continued study keeps logging to
    the store it started with, unless ``tracking_uri`` says otherwise."""
    meta = StudyMeta.load(study)
    recorder = MlflowRecorder(tracking_uri or meta.tracking_uri, experiment.name, meta.metric_name, meta.uid)
    replace(meta, tracking_uri=recorder.tracking_uri).save(study)
    return recorder


def log_study_inputs(recorder: MlflowRecorder, experiment: Experiment, space: SearchSpace) -> None:
    """The experiment file and the space file (an auto space once settled) on the parent run, with settings."""
    recorder.log_study_inputs(
        [p for p in (experiment.source, experiment.paths.auto_space if experiment.auto_space else
                     experiment.space_path) if p],
        {"task": experiment.task, "sampler": experiment.sampler, "max_metric_drop": experiment.max_metric_drop,
         "threads": experiment.latency.threads, "batch_size": experiment.latency.batch_size,
         "layers": len(space.layers), "searched_params": len(space.distributions())})


def log_to_mlflow(recorder: MlflowRecorder, trial_runs: dict[int, str]):
    """A loop recorder: one MLflow trial run per finished trial, logged before Optuna is told (exactly once)."""
    def record(trial: optuna.Trial, result) -> None:
        if trial.number not in trial_runs:
            meta = TrialMeta.of(trial)
            trial_runs[trial.number] = recorder.log_trial(trial.number, result, meta.summary, meta.origin, meta.plan)
            trial.set_user_attr("mlflow_run_id", trial_runs[trial.number])
    return record


def resume_interrupted(study: optuna.Study, recorder: MlflowRecorder, trial_runs: dict[int, str],
                       log: Callable[[str], None]) -> None:
    """Trials left RUNNING by a driver that died. One whose result already reached MLflow (the driver died
    between logging it and telling Optuna) is completed from that run, so it is neither re-run nor logged
    twice; the others are recorded FAIL and their parameters queued again."""
    meta = StudyMeta.load(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        running = optuna.trial.Trial(study, trial._trial_id)
        result = recorder.logged_result(trial_runs[trial.number]) if trial.number in trial_runs else None
        if result is not None:
            running.set_user_attr("mlflow_run_id", trial_runs[trial.number])
            tell(study, running, result, meta)
            log(f"trial {trial.number} was interrupted after its result was logged; recorded from MLflow.")
            continue
        if trial.number in trial_runs:  # created, but killed before its result was written
            recorder.client.set_terminated(trial_runs.pop(trial.number), "KILLED")
        running.set_user_attr("fail_reason", "interrupted: the driver stopped")
        running.set_user_attr("interrupted", True)
        study.tell(trial.number, state=TrialState.FAIL)
        requeue(study, trial)
        log(f"trial {trial.number} was interrupted; it will run again.")
