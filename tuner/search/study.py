"""A study from start to end: check the inputs, open the storage and MLflow, measure the fp32 baseline, queue
the references, run the ask/tell loop (:mod:`tuner.search.loop`) on an executor, re-time the front, publish it.

Only the driver writes the Optuna storage (a journal file in the run directory) and MLflow, so running the
same experiment again continues the same study.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.core.disk import OutOfDiskSpace, check_free_space, free_bytes, is_disk_full
from tuner.core.driver_lock import DriverLock
from tuner.core.errors import (
    ClusterError,
    StudyError,
)
from tuner.core.journal import release_stale_lock
from tuner.core.records import StudyMeta, TrialMeta
from tuner.core.stop import StopRequest
from tuner.executors.base import Executor
from tuner.executors.factory import ExecutorFactory, executor_factory
from tuner.experiment import Experiment
from tuner.measure.memory import peak_rss_mb
from tuner.results.front import FrontRow
from tuner.results.live_front import finish_front, publish_front
from tuner.results.retention import ArtifactRetention, DiskUse
from tuner.results.tracking import MlflowRecorder
from tuner.search.finish import (
    failure_reasons,
    front_race,
    latency_model_check,
    measure_noise,
    recheck_front_latency,
)
from tuner.search.loop import (
    Every,
    Progress,
    StudyLoop,
    TimingStats,
    failed_trials,
    is_feasible,
    n_finished,
)
from tuner.search.recording import (
    log_study_inputs,
    log_to_mlflow,
    open_recorder,
    resume_interrupted,
)
from tuner.search.reference_checks import PerChannelCheck
from tuner.search.setup import (
    PLAN,
    measure_baseline,
    open_experiment_study,
    prepare,
    resolve_seeds,
    screening,
    settle_auto_space,
)
from tuner.space import SearchSpace, load_space_file


@dataclass
class StudyResult:
    name: str
    metric_name: str
    run_dir: Path
    front: list[FrontRow]
    n_complete: int
    n_failed: int
    wall_s: float
    baseline: dict[str, float]
    tracking_uri: str
    timings: list[dict[str, float]] = field(default_factory=list)
    references: list[FrontRow] = field(default_factory=list)  # fp32 and uniform-precision trials
    live_front_s: list[float] = field(default_factory=list)  # seconds spent on each live-front refresh
    latency_check: dict[str, Any] = field(default_factory=dict)  # the front re-timed with no build running
    failures: dict[str, int] = field(default_factory=dict)  # failed trials per reason, most frequent first
    disk: DiskUse | None = None  # what the run directory holds at the end
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # largest per-trial peak: build, meter, driver
    latency_model: Any = None  # LatencyModelCheck: the per-layer model from the references, checked on the trials
    n_screened: int = 0  # stopped after the subset (PRUNED): clearly infeasible, never timed
    n_screened_before_build: int = 0  # of those, scored as their pruned fp32 model, never exported or quantized
    stages: dict[str, tuple[int, int]] = field(default_factory=dict)  # stage -> (finished trials, feasible ones)
    maximize: bool = True  # the metric's direction

    def stages_line(self) -> str:
        return "trials by stage: " + ", ".join(f"{stage} {n} ({feasible} feasible)"
                                               for stage, (n, feasible) in self.stages.items())


@dataclass
class _Run:
    """What one run of a study works with, once it is open: handed to the steps of :func:`run_study`."""

    experiment: Experiment
    study: optuna.Study
    space: SearchSpace
    task: Any
    recorder: MlflowRecorder
    trial_runs: dict[int, str]
    auto_settled: bool
    log: Callable[[str], None]

    def feeds(self, model_path: Path) -> dict:
        """The latency meter's inputs for a built model of this task."""
        from tuner.measure.latency import artifact_feeds

        return artifact_feeds(self.task, model_path, self.experiment.latency.batch_size)


def run_study(experiment: Experiment, trials: int | None = None, workers: int | None = None,
              address: str | None = None, tracking_uri: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print, executor: ExecutorFactory | None = None) -> StudyResult:
    """Run (or continue) the study of ``experiment`` until it has ``trials`` finished trials.

    ``executor`` makes the executor (:mod:`tuner.executors.factory`); default: Ray, locally with ``workers``
    workers or on the cluster at ``address``. The study closes the executor it made. One driver runs a study
    (:mod:`tuner.core.driver_lock`): a second is refused before any work.
    """
    with DriverLock(experiment.run_dir, experiment.name, log):
        if release_stale_lock(experiment.paths.journal):
            log(f"{experiment.paths.journal}: released the lock a stopped driver held on it")
        return _run_study(experiment, trials, workers, address, tracking_uri, progress, log, executor)


def _run_study(experiment: Experiment, trials: int | None, workers: int | None, address: str | None,
               tracking_uri: str | None, progress: bool, log: Callable[[str], None],
               executor: ExecutorFactory | None) -> StudyResult:
    started = time.perf_counter()
    budget = trials if trials is not None else experiment.trials
    run = _open(experiment, tracking_uri, log)
    if n_finished(run.study) >= budget:
        log(f"study {experiment.name!r} already has {n_finished(run.study)}/{budget} trials; pass --trials N to add "
            "more.")
    else:
        _check_disk(run, budget)
    retention = ArtifactRetention(experiment.paths.artifacts, experiment.keep_artifacts)
    if freed := retention.remove_unfinished():
        log(f"removed {freed / 1e6:.1f} MB of unfinished builds that a stopped driver left in "
            f"{experiment.paths.artifacts}")
    try:
        runner = (executor or executor_factory(workers=workers, address=address))(
            experiment, StudyMeta.load(run.study).uid, run.task)
    except ClusterError as exc:
        run.recorder.close("FAILED")
        raise StudyError(f"{experiment.source or experiment.name}: {exc}") from None
    timings = TimingStats()
    live_front = Every(experiment.front_every,
                       lambda step: publish_front(run.study, run.recorder, experiment.run_dir, step,
                                                  run.space.readable))
    checks: dict[str, Any] = {"latency_check": {}, "latency_model": None}
    status, progress_bar = "FAILED", Progress(run.study, budget, progress, start=False)
    with StopRequest(experiment.stop_grace_s) as stop:
        try:
            try:
                _search(run, runner, budget, stop, [timings, progress_bar, live_front, retention], checks)
            except OSError as exc:  # a write of the driver's (journal, MLflow, front files) refused for space
                if not is_disk_full(exc):
                    raise
                raise OutOfDiskSpace(f"{type(exc).__name__}: {exc}", free_bytes(experiment.run_dir)) from exc
            status = "FINISHED"
        except ClusterError as exc:  # completed trials are kept; `tuner run` again continues the study
            raise StudyError(f"{experiment.source or experiment.name}: {exc}") from None
        except KeyboardInterrupt:  # stopped (a signal, a full disk): finished trials are kept, the ones in flight
            status = "KILLED"      # re-queued
            raise
        finally:
            progress_bar.close()
            runner.close()
            front, references, disk = _publish(run, retention, status)
    return _result(run, front, references, time.perf_counter() - started, timings, live_front, checks, disk)


def _check_disk(run: _Run, budget: int) -> None:
    """Free space against what the study will keep (:func:`tuner.core.disk.check_free_space`), before any build."""
    model_bytes = sum(t.numel() * t.element_size() for t in [*run.task.model.parameters(), *run.task.model.buffers()])
    need = check_free_space(run.experiment.run_dir, model_bytes, len(run.space.references()) + 1,
                            run.experiment.keep_artifacts, budget)
    if need > 1e9:
        run.log(f"disk: the study will keep up to about {need / 1e9:.1f} GB in {run.experiment.run_dir} "
                f"({free_bytes(run.experiment.run_dir) / 1e9:.1f} GB free)")


def _publish(run: _Run, retention: ArtifactRetention, status: str) -> tuple[list, list, DiskUse | None]:
    """The front and references written out, dominated models swept, the MLflow run closed with ``status``. On a
    full disk, what cannot be written is said in one line; the journal has every finished trial."""
    experiment, front, references, disk = run.experiment, [], [], None
    try:
        front, references = finish_front(run.study, run.recorder, run.trial_runs, experiment.run_dir,
                                          run.space.readable)
        retention.sweep(run.study)
        disk = retention.disk_use(experiment.run_dir)
        run.recorder.log_study_metrics({"run_dir_mb": disk.run_dir_bytes / 1e6, "models_kept": disk.models_kept})
        run.recorder.close(status)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        run.log(f"the front could not be published ({type(exc).__name__}: {exc}); `tuner front {experiment.name}` "
                "shows it from the journal once there is space")
    return front, references, disk


def _open(experiment: Experiment, tracking_uri: str | None, log: Callable[[str], None]) -> _Run:
    """Check the inputs, then open the study (its journal in the run directory) and its MLflow parent run."""
    task, space = prepare(experiment, log)
    paths = experiment.paths
    paths.root.mkdir(parents=True, exist_ok=True)
    for src in (experiment.source, None if experiment.auto_space else experiment.space_path):
        if src:
            shutil.copy(src, paths.root / Path(src).name)
    auto_settled = experiment.auto_space and paths.auto_space.is_file() and paths.journal.is_file()
    if auto_settled:  # a continued study: the space it was created with, not a new measurement
        space = space.with_file(load_space_file(paths.auto_space))
    study, _ = open_experiment_study(experiment, space, task.evaluation.metric_name, task.evaluation.direction,
                                     log)
    recorder = open_recorder(study, experiment, tracking_uri)
    trial_runs = recorder.existing_trial_runs()
    resume_interrupted(study, recorder, trial_runs, log)
    return _Run(experiment, study, space, task, recorder, trial_runs, auto_settled, log)


def _search(run: _Run, runner: Executor, budget: int, stop: StopRequest, callbacks: list, checks: dict) -> None:
    """The auto space, the baseline and references, the seeds, the loop, and the checks once it is done."""
    experiment, study, log = run.experiment, run.study, run.log
    retention, progress_bar = callbacks[3], callbacks[1]
    # (a study with trials but no space.yaml predates it: it keeps the space its signature matched)
    if experiment.auto_space and not run.auto_settled and not study.trials:
        run.space = settle_auto_space(study, run.space, runner, experiment, run.task.evaluation.metric_name, log,
                                      stop, lambda key: retention.discard(study, key))
    log_study_inputs(run.recorder, experiment, run.space)
    if not StudyMeta.load(study).has_baseline:
        baseline = measure_baseline(study, run.space, runner, experiment, log, stop)
        if experiment.racing:
            measure_noise(study, runner, run.feeds, experiment, baseline, log)
        retention.discard(study, baseline.key)  # not a trial: the fp32 reference trial is kept instead
    progress_bar.start()
    loop = StudyLoop(study, run.space, runner, budget, recorders=[log_to_mlflow(run.recorder, run.trial_runs)],
                     callbacks=callbacks + [PerChannelCheck(run.space.offered_precisions(), progress_bar.write)],
                     stop=stop, fidelity=screening(experiment, StudyMeta.load(study)),
                     refiners=front_race(study, runner, run.feeds, experiment, log))
    guide = resolve_seeds(experiment.seeding.seeds)
    if guide and not StudyMeta.load(study).seeded:
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        loop.run(until=n_finished(study) + waiting)  # the references (queued) first
        if n_finished(study) < budget:
            write = progress_bar.write if progress_bar.enabled else log
            if guide == PLAN:
                from tuner.search.plan import start_plan

                check = start_plan(study, run.space, runner, experiment, budget - n_finished(study), run.feeds,
                                   run.recorder, write, stop, _torch_latency(run))
            else:
                from tuner.search.seeding import seed_study

                check = seed_study(study, run.space, runner, experiment, guide, run.feeds, run.recorder, write, stop)
            if check is not None:  # queues the rest as the first ones are measured
                loop.callbacks.append(check)
    loop.run()
    progress_bar.close()  # before the re-check prints
    if experiment.runtime == "torch":  # the checks below profile and re-time ONNX Runtime sessions
        return
    checks["latency_model"] = latency_model_check(study, run.space, run.feeds, experiment, run.recorder,
                                                  run.trial_runs, log)
    checks["latency_check"] = recheck_front_latency(study, runner, run.feeds, experiment, run.recorder,
                                                    run.trial_runs)


def _torch_latency(run: _Run) -> Callable[[], Any] | None:
    """On PyTorch's runtime, the plan's latency model: FLOPs shares of what each kind's reference saved."""
    if run.experiment.runtime != "torch":
        return None
    from tuner.search.torch_target import flop_share_latency

    return lambda: flop_share_latency(run.study, run.task.model, run.task.example_inputs)


def _result(run: _Run, front: list, references: list, wall_s: float, timings: TimingStats, live_front: Every,
            checks: dict, disk: DiskUse) -> StudyResult:
    study = run.study
    trials = study.get_trials(deepcopy=False)
    states, meta = [t.state for t in trials], StudyMeta.load(study)
    n_failed = len(failed_trials(study))
    return StudyResult(run.experiment.name, meta.metric_name, run.experiment.run_dir, front,
                       states.count(TrialState.COMPLETE), n_failed, wall_s,
                       {"metric": meta.baseline_metric, "latency_ms": meta.baseline_latency_ms},
                       run.recorder.tracking_uri, timings.rows, references, live_front.seconds,
                       checks["latency_check"], failure_reasons(study), disk,
                       {**timings.peak_rss_mb, "driver": peak_rss_mb()}, checks["latency_model"],
                       states.count(TrialState.PRUNED) - n_failed,
                       sum(1 for t in trials if TrialMeta.of(t).screened_before_build), _stages(study),
                       meta.maximize)


def _stages(study: optuna.Study) -> dict[str, tuple[int, int]]:
    """Finished trials per stage, and how many of them are feasible (complete, within the constraint)."""
    limit = StudyMeta.load(study).max_metric_drop
    out: dict[str, list[int]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        meta = TrialMeta.of(trial)
        counts = out.setdefault(meta.origin, [0, 0])
        counts[0] += 1
        counts[1] += is_feasible(trial, limit)
    return {stage: (n, feasible) for stage, (n, feasible) in out.items()}
