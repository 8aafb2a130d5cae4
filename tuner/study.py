"""The ask/tell loop: Optuna proposes, Ray evaluates, the driver tells Optuna and records to MLflow.

Only the driver writes the Optuna storage (a journal file in the run directory) and MLflow, so running
the same experiment again continues the same study.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tuner.build.prune import pruning_groups
from tuner.candidate import Candidate
from tuner.experiment import Experiment
from tuner.pareto import completed_rows, front_rows, plot_front, write_csv
from tuner.plots import hypervolume, layer_rows, plot_front_html, plot_layers
from tuner.space import SearchSpace, layer_op_types, load_space_file, quantizable_layers
from tuner.tracking import MlflowRecorder


class StudyError(RuntimeError):
    """The study cannot go on (for example: the fp32 model itself does not build)."""


@dataclass
class StudyResult:
    name: str
    metric_name: str
    run_dir: Path
    front: list[dict[str, Any]]
    n_complete: int
    n_failed: int
    wall_s: float
    baseline: dict[str, float]
    tracking_uri: str
    timings: list[dict[str, float]] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)  # fp32 and uniform-precision trials
    live_front_s: list[float] = field(default_factory=list)  # seconds spent on each live-front refresh
    latency_check: dict[str, Any] = field(default_factory=dict)  # the front re-timed with no build running


def open_study(run_dir: Path, name: str, sampler: optuna.samplers.BaseSampler | None = None,
               directions: list[str] | None = None) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    if directions is None:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                               load_if_exists=True)


def load_finished_study(name: str, output_dir: str | Path = "tuner-runs") -> optuna.Study:
    run_dir = Path(output_dir) / name
    if not (run_dir / "optuna.journal").is_file():
        raise FileNotFoundError(f"no study {name!r}: {run_dir / 'optuna.journal'} does not exist "
                                "(run `tuner run EXPERIMENT` first, or pass --output-dir).")
    return open_study(run_dir, name)


def default_workers(latency_threads: int) -> int:
    """On a local Ray: one worker per core, less the cores kept for latency measurement. (On a cluster the
    executor counts the cluster's CPUs once connected.)"""
    return max(1, (os.cpu_count() or 1) - latency_threads)


def make_sampler(kind: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """Samplers read the metric-drop constraint that the loop sets on each trial (`Trial.set_constraint`)."""
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be 'tpe', 'nsga2' or 'random', but got {kind!r}.")


def prepare(experiment: Experiment):
    """Load the task and resolve the space in the driver: every config error surfaces before any trial."""
    space_file = load_space_file(experiment.space_path)  # cheap checks first: the task may train a model
    task = experiment.task_ref().load()
    layer_ops = layer_op_types(task.model, task.example_inputs)
    unused = [name for name in quantizable_layers(task.model) if name not in layer_ops]
    if unused:
        print(f"not in the exported graph (output unused), not tuned: {', '.join(unused)}")
    wants_pruning = any(rule.prune is not None for rule in space_file.rules)
    groups = pruning_groups(task.model, task.example_inputs, task.output_layers) if wants_pruning else []
    space = SearchSpace(space_file, layer_ops, groups, experiment.round_to)
    return task, space


class _Progress:
    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="trial", dynamic_ncols=True)

    def update(self, n: int, failed: int, front: int, best: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"failed={failed} front={front} {best}")
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_study(experiment: Experiment, trials: int | None = None, workers: int | None = None,
              address: str | None = None, tracking_uri: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> StudyResult:
    started = time.perf_counter()
    budget = trials if trials is not None else experiment.trials
    if workers is None and not address:
        workers = default_workers(experiment.latency.threads)
    run_dir = experiment.run_dir
    task, space = prepare(experiment)
    metric_name = task.evaluation.metric_name
    run_dir.mkdir(parents=True, exist_ok=True)
    for src in (experiment.source, experiment.space_path):
        if src:
            shutil.copy(src, run_dir / Path(src).name)

    directions = [task.evaluation.direction, "minimize"]
    # A resumed study gets a sampler seeded past the trials it has, or it would replay the first run's draws.
    n_before = len(open_study(run_dir, experiment.name, optuna.samplers.RandomSampler(), directions).trials)
    seed = None if experiment.seed is None else experiment.seed + n_before
    study = open_study(run_dir, experiment.name, make_sampler(experiment.sampler, seed), directions)
    space_signature = json.dumps({k: repr(v) for k, v in sorted(space.distributions().items())})
    if study.user_attrs.get("space_signature", space_signature) != space_signature:
        raise StudyError(f"study {experiment.name!r} in {run_dir} was created with a different search space; "
                         "give the experiment a new name or remove that run directory.")
    study.set_user_attr("space_signature", space_signature)
    if "uid" not in study.user_attrs:  # tells this study's MLflow runs from an older study of the same name
        study.set_user_attr("uid", uuid.uuid4().hex)
    study.set_user_attr("metric_name", metric_name)
    study.set_user_attr("task", experiment.task)
    ref = experiment.task_ref()  # what `tuner verify` needs to rebuild and re-measure, without the files
    study.set_user_attr("task_ref", {"spec": ref.spec, "args": ref.args, "base_dir": ref.base_dir})
    study.set_user_attr("eval_settings", asdict(experiment.eval_settings()))
    study.set_user_attr("opt_levels", list(space.opt_levels))
    study.set_user_attr("max_metric_drop", experiment.max_metric_drop)

    if experiment.source:  # what `tuner resume STUDY` runs again
        study.set_user_attr("experiment_file", str(Path(experiment.source).resolve()))
    # A continued study keeps logging where it started, unless told otherwise.
    tracking_uri = tracking_uri or study.user_attrs.get("tracking_uri")
    recorder = MlflowRecorder(tracking_uri, experiment.name, metric_name, study.user_attrs["uid"])
    study.set_user_attr("tracking_uri", recorder.tracking_uri)
    recorder.log_study_inputs(
        [p for p in (experiment.source, experiment.space_path) if p],
        {"task": experiment.task, "sampler": experiment.sampler, "max_metric_drop": experiment.max_metric_drop,
         "threads": experiment.latency.threads, "batch_size": experiment.latency.batch_size,
         "layers": len(space.layers), "searched_params": len(space.distributions())})
    trial_runs = recorder.existing_trial_runs()
    _resume_interrupted(study, recorder, trial_runs, experiment.max_metric_drop, log)
    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                if not t.user_attrs.get("interrupted")]
    if len(finished) >= budget:
        log(f"study {experiment.name!r} already has {len(finished)}/{budget} trials; pass --trials N to add more.")

    from tuner.executors import (  # Ray is imported only when a study really runs
        ClusterError,
        RayExecutor,
    )

    try:
        executor = RayExecutor(experiment.task_ref(), experiment.eval_settings(), run_dir / "artifacts", workers,
                               address, experiment.candidate_timeout_s, experiment.retries,
                               experiment.latency.resource, experiment.pending_timeout_s, study.user_attrs["uid"])
    except ClusterError as exc:
        recorder.close("FAILED")
        raise StudyError(f"{experiment.source or experiment.name}: {exc}") from None
    timings: list[dict[str, float]] = []
    live_front_s: list[float] = []
    latency_check: dict[str, Any] = {}
    status = "FAILED"
    try:
        if "baseline_metric" not in study.user_attrs:
            _measure_baseline(study, space, executor, experiment, log)
            # The front always contains or dominates the references, since they are trials too.
            for label, params in space.references():
                study.enqueue_trial(params, user_attrs={"reference": label})
        def publish(step: int) -> None:
            start = time.perf_counter()
            _publish_front(study, recorder, run_dir, metric_name, step)
            live_front_s.append(time.perf_counter() - start)

        _loop(study, space, executor, recorder, trial_runs, budget, len(finished), experiment, timings, progress,
              publish)
        latency_check = _recheck_front_latency(study, executor, task, experiment, recorder, trial_runs)
        status = "FINISHED"
    except ClusterError as exc:  # completed trials are kept; `tuner run` again continues the study
        raise StudyError(f"{experiment.source or experiment.name}: {exc}") from None
    finally:
        executor.shutdown()
        front, references = _finish(study, recorder, trial_runs, run_dir, metric_name)
        recorder.close(status)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return StudyResult(experiment.name, metric_name, run_dir, front, states.count(TrialState.COMPLETE),
                       states.count(TrialState.FAIL), time.perf_counter() - started,
                       {"metric": study.user_attrs["baseline_metric"],
                        "latency_ms": study.user_attrs["baseline_latency_ms"]},
                       recorder.tracking_uri, timings, references, live_front_s, latency_check)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: dict[str, Any], max_metric_drop: float | None) -> bool:
    """Record an outcome on its trial (values, constraint, user attrs); returns whether it completed."""
    if outcome.get("worker_deaths"):
        trial.set_user_attr("worker_deaths", outcome["worker_deaths"])
    if outcome["state"] != "COMPLETE":
        trial.set_user_attr("fail_reason", outcome.get("error"))
        study.tell(trial, state=TrialState.FAIL)
        return False
    baseline = study.user_attrs["baseline_metric"]
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    drop = (baseline - outcome["metric"]) if maximize else (outcome["metric"] - baseline)
    if max_metric_drop is not None:  # <= 0 is feasible
        trial.set_constraint("metric_drop", drop - max_metric_drop)
    for key, value in {"key": outcome["key"], "metric_drop": drop,
                       "latency_p90_ms": outcome["latency"]["p90_ms"],
                       "latency_cv": outcome["latency"]["cv"], "size_mb": outcome["size_mb"],
                       "extra_metrics": outcome.get("extra_metrics", {}),
                       "artifact_sha256": outcome.get("artifact_sha256"),
                       "model_stats": outcome.get("model_stats", {}),
                       "environment": outcome.get("environment", {}),
                       "timings": outcome["timings"]}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [outcome["metric"], outcome["latency"]["median_ms"]])
    return True


def _resume_interrupted(study: optuna.Study, recorder: MlflowRecorder, trial_runs: dict[int, str],
                        max_metric_drop: float | None, log: Callable[[str], None]) -> None:
    """Trials left RUNNING by a driver that died. One whose result already reached MLflow (the driver died
    between logging it and telling Optuna) is completed from that run, so it is neither re-run nor logged
    twice; the others are recorded FAIL and their parameters queued again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        running = optuna.trial.Trial(study, trial._trial_id)
        outcome = recorder.logged_outcome(trial_runs[trial.number]) if trial.number in trial_runs else None
        if outcome is not None:
            running.set_user_attr("mlflow_run_id", trial_runs[trial.number])
            _tell(study, running, outcome, max_metric_drop)
            log(f"trial {trial.number} was interrupted after its result was logged; recorded from MLflow.")
            continue
        if trial.number in trial_runs:  # created, but killed before its result was written
            recorder.client.set_terminated(trial_runs.pop(trial.number), "KILLED")
        running.set_user_attr("fail_reason", "interrupted: the driver stopped")
        running.set_user_attr("interrupted", True)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={k: v for k, v in trial.user_attrs.items()
                                                      if k == "reference"})
        log(f"trial {trial.number} was interrupted; it will run again.")


def _recheck_front_latency(study, executor, task, experiment: Experiment, recorder: MlflowRecorder,
                           trial_runs: dict[int, str]) -> dict[str, Any]:
    """Once no build runs, time the front again where it was timed and compare with the latency measured
    while the study was busy. The study's values stay as measured (the front is what its trials gave); the
    re-check goes to the study's attributes and to MLflow (``latency_alone_ms`` on the trial runs)."""
    from tuner.evaluate import artifact_feeds

    models = {t.number: experiment.run_dir / "artifacts" / t.user_attrs.get("key", "") / "model.onnx"
              for t in study.best_trials}
    models = {n: path for n, path in models.items() if path.is_file()}
    if not models:
        return {}
    feeds = artifact_feeds(task, next(iter(models.values())), experiment.latency.batch_size)
    alone = executor.retime([(n, path, study.trials[n].user_attrs.get("environment", {}))
                             for n, path in models.items()], feeds)
    if not alone:
        return {}
    for number, lat in alone.items():
        if number in trial_runs:
            recorder.client.log_metric(trial_runs[number], "latency_alone_ms", lat["median_ms"])
    ratios = sorted(study.trials[n].values[1] / lat["median_ms"] for n, lat in alone.items())
    check = {"front_trials": len(models), "retimed": len(ratios), "median_ratio": statistics.median(ratios),
             "min_ratio": ratios[0], "max_ratio": ratios[-1],
             "latency_alone_ms": {str(n): lat["median_ms"] for n, lat in alone.items()}}
    study.set_user_attr("latency_check", check)
    recorder.client.log_metric(recorder.parent_run_id, "latency_check_median_ratio", check["median_ratio"])
    return check


def _measure_baseline(study, space: SearchSpace, executor, experiment: Experiment, log) -> None:
    reference = Candidate(opt_level="all")  # every layer fp32, unpruned, unfused
    log("measuring the fp32 baseline ...")
    executor.submit("baseline", reference.to_dict())
    results = []
    while not results:
        results = executor.results(timeout=5.0)
    outcome = results[0][1]
    if outcome["state"] != "COMPLETE":
        raise StudyError(f"the fp32 baseline of task {experiment.task!r} does not build or run: {outcome['error']}")
    study.set_user_attr("baseline_metric", outcome["metric"])
    study.set_user_attr("baseline_latency_ms", outcome["latency"]["median_ms"])
    log(f"fp32 baseline: {study.user_attrs['metric_name']}={outcome['metric']:.4f}, "
        f"latency={outcome['latency']['median_ms']:.3f} ms")


def _loop(study, space, executor, recorder, trial_runs, budget, done, experiment, timings, progress,
          publish: Callable[[int], None]) -> None:
    dists = space.distributions()
    metric_name = study.user_attrs["metric_name"]
    bar = _Progress(budget, min(done, budget), progress)
    failed = len([t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if not t.user_attrs.get("interrupted")])
    in_flight: dict[int, tuple[optuna.Trial, Candidate, float]] = {}
    try:
        while done < budget or in_flight:
            while executor.idle and done + len(in_flight) < budget:
                trial = study.ask(fixed_distributions=dists)
                candidate = space.decode(trial.params)
                trial.set_user_attr("summary", candidate.summary())
                in_flight[trial.number] = (trial, candidate, time.perf_counter())
                executor.submit(trial.number, candidate.to_dict())
            for number, outcome in executor.results(timeout=1.0):
                trial, candidate, submitted = in_flight.pop(number)
                tell_start = time.perf_counter()
                if number not in trial_runs:
                    trial_runs[number] = recorder.log_trial(number, outcome, candidate.summary())
                    trial.set_user_attr("mlflow_run_id", trial_runs[number])
                if not _tell(study, trial, outcome, experiment.max_metric_drop):
                    failed += 1
                row = dict(outcome.get("timings", {}))
                # Time a trial spent on neither building, scoring, timing nor waiting for the meter: Ray's
                # round trips and transfers, the driver writing the artifact, Optuna and MLflow.
                row["orchestration"] = row.get("wall", 0.0) - row.get("worker_total", 0.0) - row.get(
                    "latency", 0.0) - row.get("latency_wait", 0.0) + (time.perf_counter() - tell_start)
                timings.append(row)
                done += 1
                front = study.best_trials
                best = ""
                if front:
                    fastest = min(front, key=lambda t: t.values[1])
                    best = f"fastest={fastest.values[1]:.3f}ms@{metric_name}={fastest.values[0]:.4f}"
                bar.update(1, failed, len(front), best)
                if done % experiment.front_every == 0 and done < budget:
                    publish(done)  # the live front: files, MLflow artifacts and hypervolume
    finally:
        bar.close()
        for trial, _, _ in in_flight.values():  # stopped early: leave nothing RUNNING
            trial.set_user_attr("fail_reason", "interrupted: the study stopped")
            trial.set_user_attr("interrupted", True)
            study.enqueue_trial(trial.params, user_attrs={k: v for k, v in trial.user_attrs.items()
                                                          if k == "reference"})
            study.tell(trial, state=TrialState.FAIL)


FRONT_FILES = ("pareto.csv", "references.csv", "pareto.png", "pareto.html", "front_layers.png")


def _publish_front(study, recorder: MlflowRecorder, run_dir: Path, metric_name: str, step: int):
    """Compute the front once; write its table, plots and hypervolume to the run directory and MLflow."""
    front = front_rows(study)
    rows = completed_rows(study)
    by_trial = {r["trial"]: r for r in rows}
    references = {t.user_attrs["reference"]: by_trial[t.number] for t in study.get_trials(deepcopy=False)
                  if "reference" in t.user_attrs and t.number in by_trial}
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    drop = study.user_attrs.get("max_metric_drop")
    threshold = None if drop is None else study.user_attrs["baseline_metric"] + (-drop if maximize else drop)
    write_csv(front, run_dir / "pareto.csv", metric_name)
    write_csv(list(references.values()), run_dir / "references.csv", metric_name)
    plot_front(rows, front, metric_name, run_dir / "pareto.png", references, threshold)
    plot_front_html(rows, front, metric_name, run_dir / "pareto.html", references, threshold)
    params_of = {r["trial"]: study.trials[r["trial"]].params for r in front}
    plot_layers(layer_rows(front, params_of), metric_name, {r["trial"]: r[metric_name] for r in front},
                run_dir / "front_layers.png")
    # Hypervolume of (latency, metric) up to the fp32 latency and the constraint (or worst metric seen).
    sign = -1 if maximize else 1
    worst = threshold if threshold is not None else (min if maximize else max)(r[metric_name] for r in rows)
    reference_point = (study.user_attrs["baseline_latency_ms"], sign * worst)
    hv = hypervolume([(r["latency_ms"], sign * r[metric_name]) for r in front], reference_point)
    files = [run_dir / name for name in FRONT_FILES if (run_dir / name).is_file()]
    recorder.log_front(files, {"front_size": len(front), "hypervolume": hv}, step=step)
    return front, references


def _finish(study, recorder: MlflowRecorder, trial_runs: dict[int, str], run_dir: Path, metric_name: str):
    if "baseline_latency_ms" not in study.user_attrs:
        return [], []
    n_finished = len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    front, references = _publish_front(study, recorder, run_dir, metric_name, n_finished)
    models = {}
    for r in front:
        path = run_dir / "artifacts" / r["key"] / "model.onnx"
        if path.is_file():
            models[r["trial"]] = path
    recorder.mark_front(trial_runs, {r["trial"] for r in front}, models)
    summary = {"baseline_" + metric_name: study.user_attrs["baseline_metric"],
               "baseline_latency_ms": study.user_attrs["baseline_latency_ms"]}
    if front:
        summary["best_speedup"] = max(r["speedup"] for r in front)
    recorder.log_summary(summary)
    return front, list(references.values())
