"""A study from start to end: check the inputs, open the storage and MLflow, measure the fp32 baseline, queue
the references, run the ask/tell loop (:mod:`tuner.study_loop`) on an executor, re-time the front, publish it.

Only the driver writes the Optuna storage (a journal file in the run directory) and MLflow, so running the
same experiment again continues the same study.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from tuner.candidate import Candidate
from tuner.errors import ClusterError, SpaceError, StudyError, TaskError, UserCodeError
from tuner.executors.base import Executor, Retime
from tuner.experiment import Experiment
from tuner.infeasible import SeesInfeasible
from tuner.live_front import finish_front, publish_front
from tuner.measure.memory import peak_rss_mb, release_memory
from tuner.records import FULL, Fidelity, StudyMeta, TrialMeta, TrialResult
from tuner.reference_checks import PerChannelCheck
from tuner.retention import ArtifactRetention, DiskUse
from tuner.space import (
    SearchSpace,
    auto_space_file,
    layer_op_types,
    load_space_file,
    quantizable_layers,
    untuned_layers,
)
from tuner.stop import StopRequest, StudyStopped
from tuner.storage import JOURNAL, load_finished_study, open_study  # noqa: F401  (importable from here)
from tuner.study_loop import Every, Progress, StudyLoop, TimingStats, failed_trials, n_finished, requeue, tell
from tuner.tracking import MlflowRecorder


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
    failures: dict[str, int] = field(default_factory=dict)  # failed trials per reason, most frequent first
    disk: DiskUse | None = None  # what the run directory holds at the end
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # largest per-trial peak: build, meter, driver
    latency_model: Any = None  # LatencyModelCheck: the per-layer model from the references, checked on the trials
    n_screened: int = 0  # stopped after the subset (PRUNED): clearly infeasible, never timed
    n_screened_before_build: int = 0  # of those, scored as their pruned fp32 model, never exported or quantized


def default_workers(latency_threads: int) -> int:
    """On a local Ray: one worker per core, less the cores kept for latency measurement. (On a cluster the
    executor counts the cluster's CPUs once connected.)"""
    return max(1, (os.cpu_count() or 1) - latency_threads)


# What `sampler: auto` (the default) runs. In experiments/search (digits CNN, 50 trials, 5 seeds on a 16-core
# machine and 1 here) TPE and GP reached the same hypervolume within the seeds' spread, both well above random
# and NSGA-II; TPE's cost per trial stays small in spaces of hundreds of parameters.
AUTO_SAMPLER = "tpe"


def resolve_sampler(kind: str) -> str:
    return AUTO_SAMPLER if kind == "auto" else kind


# What `seeding: {seeds: auto}` (the default) queues. In experiments/search, on MiniLM's broad precision space a
# sensitivity pass and 8 seeds reached 0.92 and 1.00 of the union's hypervolume within 10 trials after the pass
# (25-31 trials' worth), where TPE alone reached 0.80 at 100 trials; on the digits CNN's pruning + precision
# space, pruning groups interact (a pair pruned together costs far more than the sum of each alone), the
# predicted path broke early, and seeding did no better than TPE for the pass's cost.
AUTO_SEEDS = 8


def resolve_seeds(seeds: int | str, space: SearchSpace) -> int:
    if seeds != "auto":
        return int(seeds)
    return 0 if space.prunes else AUTO_SEEDS


def make_sampler(kind: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """Samplers read the metric-drop constraint that the loop sets on each trial (`Trial.set_constraint`). TPE
    reads failed and screened-out trials (PRUNED, constraint violated) as infeasible; GP reads COMPLETE trials
    only and is shown those as infeasible COMPLETE ones (`tuner.infeasible`). NSGA-II never makes a parent of
    a trial that did not complete, which is how a genetic algorithm discards an infeasible child; shown the
    failures as well it failed no less often (12 seeded runs of tests/test_infeasible.py's problem)."""
    kind = resolve_sampler(kind)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":  # Gaussian-process Bayesian optimization; reads the constraint like the others
        return SeesInfeasible(optuna.samplers.GPSampler(seed=seed, n_startup_trials=10))
    raise ValueError(f"sampler must be 'auto', 'tpe', 'nsga2', 'gp' or 'random', but got {kind!r}.")


def prepare(experiment: Experiment, log: Callable[[str], None] = print):
    """Load the task and resolve the space in the driver: every config error surfaces before any trial."""
    from tuner.build.prune import broken_groups, pruning_groups
    from tuner.task import check_forward

    # cheap checks first: the task may train a model
    space_file = None if experiment.auto_space else load_space_file(experiment.space_path)
    start = time.perf_counter()
    task = experiment.task_ref().load()
    check_forward(task, experiment.task)
    params = sum(p.numel() for p in task.model.parameters())
    log(f"task loaded in {time.perf_counter() - start:.1f} s: {type(task.model).__name__}, {params:,} "
        "parameters; exporting it once to read its layers ...")
    start = time.perf_counter()
    layer_ops = layer_op_types(task.model, task.example_inputs, experiment.exporter)
    log(f"exported in {time.perf_counter() - start:.1f} s: {len(layer_ops)} layers to tune")
    unused = [name for name in quantizable_layers(task.model) if name not in layer_ops]
    if unused:
        log(f"not in the exported graph (output unused), not tuned: {', '.join(unused)}")
    untuned = untuned_layers(task.model)
    if untuned:
        log("kept fp32, not searched (tuner searches Conv2d, Linear and single-layer LSTM layers): "
            + ", ".join(f"{name} ({kind})" for name, kind in untuned))
    groups = []
    if space_file is None or any(rule.prune is not None for rule in space_file.rules):
        try:
            groups = pruning_groups(task.model, task.example_inputs, task.output_layers)
        except Exception as exc:  # torch-pruning's tracer does not know every layer type
            why = f"torch-pruning cannot trace the channel dependencies of {type(task.model).__name__} " \
                  f"({type(exc).__name__}: {exc})"
            if space_file is not None:
                raise SpaceError(f"{experiment.space_path}: its rules prune, but {why}; remove 'prune' from the "
                                 "rules to search precision only.") from exc
            log(f"not pruned: {why}")
    if space_file is None:
        space_file = auto_space_file(f"{experiment.source}: search_space auto", layer_ops, groups,
                                     experiment.round_to)
    # GP models distances between points: it gets each layer's precision as an ordered integer, not a category
    ordered = resolve_sampler(experiment.sampler) == "gp"
    space = SearchSpace(space_file, layer_ops, groups, experiment.round_to, ordered_precision=ordered)
    # Groups pruned at their largest ratios: one that breaks the model is left out, not tried in every trial.
    largest = {name: max(values) for name, values in space.prune_choices.items() if max(values) > 0}
    start = time.perf_counter()
    broken = broken_groups(task.model, task.example_inputs, largest, task.output_layers, experiment.round_to)
    if largest:
        log(f"{len(largest)} pruning groups checked in {time.perf_counter() - start:.1f} s (pruned at their largest "
            "ratios and run)")
    for name, why in broken.items():
        log(f"warning: pruning group {name} is left out of the search: pruned by {largest[name]:g}, {why}")
    if broken:
        space = SearchSpace(space_file, layer_ops, [g for g in groups if g.name not in broken], experiment.round_to,
                            left_out=set(broken), ordered_precision=ordered)
    check_finetune_hook(task, space, experiment)
    release_memory()  # the exports and pruned copies above are garbage now; keep the driver small
    return task, space


def check_finetune_hook(task, space: SearchSpace, experiment: Experiment) -> None:
    """Recovery ``task`` calls the user's fine-tuning on pruned models: run it once on one, before any trial."""
    from tuner.build.prune import prune
    from tuner.build.recovery import RecoverySettings, recover

    if "task" not in space.recovery or not space.prune_choices:
        return
    if task.finetune is None:
        raise TaskError(f"task {experiment.task!r}: the search space offers recovery 'task', but the task has no "
                        "finetune hook (Task(finetune=...)).")
    name, values = next(iter(space.prune_choices.items()))
    model = prune(task.model, task.example_inputs, {name: max(values)}, task.output_layers, experiment.round_to)
    try:
        recover(model, task.model, "task", task.calibration_inputs, RecoverySettings(), task.finetune)
    except UserCodeError as exc:
        raise TaskError(f"task {experiment.task!r}: {exc}") from exc


def open_experiment_study(experiment: Experiment, space: SearchSpace, metric_name: str, direction: str
                          ) -> tuple[optuna.Study, StudyMeta]:
    """The experiment's study (created, or continued with a sampler seeded past its trials) and what it
    records about itself; a continued study must have been created with the same search space."""
    run_dir = experiment.run_dir
    directions = [direction, "minimize"]
    # A resumed study gets a sampler seeded past the trials it has, or it would replay the first run's draws.
    n_before = len(open_study(run_dir, experiment.name, optuna.samplers.RandomSampler(), directions).trials)
    seed = None if experiment.seed is None else experiment.seed + n_before
    study = open_study(run_dir, experiment.name, make_sampler(experiment.sampler, seed), directions)
    meta = StudyMeta.load(study)
    signature = space_signature(space)
    # a study without trials has sampled nothing yet: it takes the space it is given
    if study.trials and (meta.space_signature or signature) != signature:
        raise StudyError(f"study {experiment.name!r} in {run_dir} was created with a different search space; "
                         "give the experiment a new name or remove that run directory.")
    ref = experiment.task_ref()
    meta = replace(meta, space_signature=signature, uid=meta.uid or uuid.uuid4().hex, metric_name=metric_name,
                   task=experiment.task, task_ref={"spec": ref.spec, "args": ref.args, "base_dir": ref.base_dir},
                   eval_settings=experiment.eval_settings().to_dict(), opt_levels=tuple(space.opt_levels),
                   max_metric_drop=experiment.max_metric_drop,
                   experiment_file=str(Path(experiment.source).resolve()) if experiment.source else
                   meta.experiment_file)
    meta.save(study)
    return study, meta


def space_signature(space: SearchSpace) -> str:
    return json.dumps({k: repr(v) for k, v in sorted(space.distributions().items())})


AUTO_SPACE = "space.yaml"  # a study's `search_space: auto`, in its run directory


def settle_auto_space(study: optuna.Study, space: SearchSpace, executor: Executor, experiment: Experiment,
                      metric_name: str, log: Callable[[str], None], stop: StopRequest,
                      discard: Callable[[str], None]) -> SearchSpace:
    """A new study's ``search_space: auto``. With ``auto_kinds: measured``, fp32 and each kind's uniform model
    are built by the workers and timed by the meter the trials use, and the kinds not faster than fp32 there
    leave the space. Written to the run directory's ``space.yaml`` (a file to start your own from, with what
    was measured in its header), which a continued study reads back instead of measuring again."""
    from tuner.space_measure import keep_fast, time_uniform_kinds_on

    header = [f"# generated by `tuner run` from {experiment.source or experiment.name} (search_space: auto, "
              f"auto_kinds: {experiment.auto_kinds}): every precision kind each layer's op type runs"
              + (" faster than fp32 here" if experiment.auto_kinds == "measured" else "")
              + ", pruning where the model is prunable"]
    if experiment.auto_kinds == "measured":
        log(f"measuring which precision kinds run faster than fp32 here: {len(space.references())} uniform "
            "models, built and timed (not scored) ...")
        start = time.perf_counter()
        timings = time_uniform_kinds_on(executor, space, stop)
        for timing in timings:
            log(f"  {timing.line(metric_name)}")
        left_out = [t.kind for t in timings if not t.kept]
        log(f"measured in {time.perf_counter() - start:.1f} s; "
            + (f"left out: {', '.join(left_out)}" if left_out else "every kind kept"))
        header += [f"# {timing.line(metric_name)}" for timing in timings]
        space = space.with_file(keep_fast(space.file, timings))
        for timing in timings:  # a kept kind's model is its reference trial's; a left-out one's goes
            if not timing.kept and timing.key:
                discard(timing.key)
    (experiment.run_dir / AUTO_SPACE).write_text("\n".join(header) + "\n"
                                                 + yaml.safe_dump(space.file.to_dict(), sort_keys=False))
    replace(StudyMeta.load(study), space_signature=space_signature(space),
            opt_levels=tuple(space.opt_levels)).save(study)
    return space


def make_ray_executor(experiment: Experiment, workers: int | None, address: str | None, uid: str) -> Executor:
    from tuner.executors.ray_executor import RayExecutor  # Ray is imported only when a study really runs

    return RayExecutor(experiment.task_ref(), experiment.eval_settings(), experiment.run_dir / "artifacts", workers,
                       address, experiment.candidate_timeout_s, experiment.retries, experiment.latency.resource,
                       experiment.pending_timeout_s, uid)


def run_study(experiment: Experiment, trials: int | None = None, workers: int | None = None,
              address: str | None = None, tracking_uri: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print,
              executor: Callable[[Experiment, str, Any], Executor] | None = None) -> StudyResult:
    """Run (or continue) the study of ``experiment`` until it has ``trials`` finished trials.

    ``executor`` makes the executor from the experiment, the study's uid and the task the driver loaded (an
    in-process executor uses it rather than loading it again); default: Ray, locally with
    ``workers`` workers or on the cluster at ``address``. The study closes the executor it made.
    """
    started = time.perf_counter()
    budget = trials if trials is not None else experiment.trials
    if workers is None and not address:
        workers = default_workers(experiment.latency.threads)
    run_dir = experiment.run_dir
    task, space = prepare(experiment, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    for src in (experiment.source, None if experiment.auto_space else experiment.space_path):
        if src:
            shutil.copy(src, run_dir / Path(src).name)
    auto_settled = experiment.auto_space and (run_dir / AUTO_SPACE).is_file() and (run_dir / JOURNAL).is_file()
    if auto_settled:  # a continued study: the space it was created with, not a new measurement
        space = space.with_file(load_space_file(run_dir / AUTO_SPACE))
    study, meta = open_experiment_study(experiment, space, task.evaluation.metric_name, task.evaluation.direction)
    recorder = open_recorder(study, experiment, tracking_uri)
    trial_runs = recorder.existing_trial_runs()
    resume_interrupted(study, recorder, trial_runs, log)
    if n_finished(study) >= budget:
        log(f"study {experiment.name!r} already has {n_finished(study)}/{budget} trials; pass --trials N to add "
            "more.")
    try:
        make = executor or (lambda exp, uid, _: make_ray_executor(exp, workers, address, uid))
        runner = make(experiment, meta.uid, task)
    except ClusterError as exc:
        recorder.close("FAILED")
        raise StudyError(f"{experiment.source or experiment.name}: {exc}") from None
    timings, progress_bar = TimingStats(), None
    live_front = Every(experiment.front_every,
                       lambda step: publish_front(study, recorder, run_dir, step, space.readable))
    retention = ArtifactRetention(run_dir / "artifacts", experiment.keep_artifacts)
    latency_check: dict[str, Any] = {}
    model_check = None
    status = "FAILED"
    with StopRequest(experiment.stop_grace_s) as stop:
        try:
            # (a study with trials but no space.yaml predates it: it keeps the space its signature matched)
            if experiment.auto_space and not auto_settled and not study.trials:
                space = settle_auto_space(study, space, runner, experiment, task.evaluation.metric_name, log,
                                          stop, lambda key: retention.discard(study, key))
            log_study_inputs(recorder, experiment, space)
            if not meta.has_baseline:
                baseline = measure_baseline(study, space, runner, experiment, log, stop)
                if experiment.racing:
                    measure_noise(study, runner, task, experiment, baseline, log)
                retention.discard(study, baseline.key)  # not a trial: the fp32 reference trial is kept instead
            progress_bar = Progress(study, budget, progress)
            loop = StudyLoop(study, space, runner, budget, recorders=[log_to_mlflow(recorder, trial_runs)],
                             callbacks=[timings, progress_bar, live_front, retention,
                                        PerChannelCheck(space.offered_precisions(), progress_bar.write)], stop=stop,
                             fidelity=screening(experiment, StudyMeta.load(study)),
                             refiners=front_race(study, runner, task, experiment, log))
            n_seeds = resolve_seeds(experiment.seeding.seeds, space)
            if n_seeds and not StudyMeta.load(study).seeded:
                waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
                loop.run(until=n_finished(study) + waiting)  # the references (queued) first
                if n_finished(study) < budget:
                    from tuner.evaluate import artifact_feeds
                    from tuner.seeding import seed_study

                    check = seed_study(study, space, runner, experiment, n_seeds,
                                       lambda path: artifact_feeds(task, path, experiment.latency.batch_size),
                                       recorder, progress_bar.write if progress else log, stop)
                    if check is not None:  # queues the rest of the seeds as the first ones are measured
                        loop.callbacks.append(check)
            loop.run()
            progress_bar.close()  # before the re-check prints
            model_check = latency_model_check(study, space, task, experiment, recorder, trial_runs, log)
            latency_check = recheck_front_latency(study, runner, task, experiment, recorder, trial_runs)
            status = "FINISHED"
        except ClusterError as exc:  # completed trials are kept; `tuner run` again continues the study
            raise StudyError(f"{experiment.source or experiment.name}: {exc}") from None
        except KeyboardInterrupt:  # stopped: finished trials are kept, the ones in flight re-queued
            status = "KILLED"
            raise
        finally:
            if progress_bar is not None:
                progress_bar.close()
            runner.close()
            front, references = finish_front(study, recorder, trial_runs, run_dir, space.readable)
            retention.sweep(study)
            disk = retention.disk_use(run_dir)
            recorder.log_study_metrics({"run_dir_mb": disk.run_dir_bytes / 1e6, "models_kept": disk.models_kept})
            recorder.close(status)
    states, meta = [t.state for t in study.get_trials(deepcopy=False)], StudyMeta.load(study)
    n_failed = len(failed_trials(study))
    return StudyResult(experiment.name, meta.metric_name, run_dir, front, states.count(TrialState.COMPLETE),
                       n_failed, time.perf_counter() - started,
                       {"metric": meta.baseline_metric, "latency_ms": meta.baseline_latency_ms},
                       recorder.tracking_uri, timings.rows, references, live_front.seconds, latency_check,
                       failure_reasons(study), disk, {**timings.peak_rss_mb, "driver": peak_rss_mb()}, model_check,
                       states.count(TrialState.PRUNED) - n_failed,
                       sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("screened_before_build")))


def measure_noise(study: optuna.Study, executor: Executor, task, experiment: Experiment, baseline: TrialResult,
                  log: Callable[[str], None]) -> None:
    """Time the baseline's artifact several times in a row on the study's meter; store and print the spread."""
    from tuner.evaluate import artifact_feeds
    from tuner.racing import measure_noise_floor

    path = Path(baseline.artifact_dir or experiment.run_dir / "artifacts" / baseline.key) / "model.onnx"
    if not path.is_file():
        return
    floor = measure_noise_floor(executor, path, artifact_feeds(task, path, experiment.latency.batch_size),
                                dict(baseline.environment))
    if floor is not None:
        replace(StudyMeta.load(study), noise_floor_ms=floor.medians_ms).save(study)
        log(floor.line())


def front_race(study: optuna.Study, executor: Executor, task, experiment: Experiment,
               log: Callable[[str], None]) -> list:
    """The loop's refiners: the front race, when the experiment races and the noise floor is known."""
    from tuner.evaluate import artifact_feeds
    from tuner.racing import FrontRace, NoiseFloor

    medians = StudyMeta.load(study).noise_floor_ms
    if not experiment.racing or len(medians) < 2:
        return []
    return [FrontRace(executor, experiment.run_dir / "artifacts",
                      lambda path: artifact_feeds(task, path, experiment.latency.batch_size), NoiseFloor(medians),
                      log)]


def screening(experiment: Experiment, meta: StudyMeta) -> Callable[[optuna.Trial], Fidelity]:
    """Each trial's fidelity: references always in full (they are measured side by side with everything);
    others screened on a subset first when the experiment asks for it and the study has a constraint."""
    threshold = meta.metric_threshold()
    if experiment.screening.samples is None or threshold is None:
        return lambda trial: FULL
    screened = Fidelity(experiment.screening.samples, True, threshold, meta.maximize, experiment.screening.z)
    return lambda trial: FULL if trial.user_attrs.get("reference") else screened


def failure_reasons(study: optuna.Study) -> dict[str, int]:
    """How many trials failed for each reason (its first line), most frequent first."""
    reasons = [t.user_attrs["fail_reason"].splitlines()[0][:200] for t in failed_trials(study)]
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


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
        [p for p in (experiment.source, experiment.run_dir / AUTO_SPACE if experiment.auto_space else
                     experiment.space_path) if p],
        {"task": experiment.task, "sampler": experiment.sampler, "max_metric_drop": experiment.max_metric_drop,
         "threads": experiment.latency.threads, "batch_size": experiment.latency.batch_size,
         "layers": len(space.layers), "searched_params": len(space.distributions())})


def log_to_mlflow(recorder: MlflowRecorder, trial_runs: dict[int, str]):
    """A loop recorder: one MLflow trial run per finished trial, logged before Optuna is told (exactly once)."""
    def record(trial: optuna.Trial, result) -> None:
        if trial.number not in trial_runs:
            trial_runs[trial.number] = recorder.log_trial(trial.number, result, trial.user_attrs.get("summary", ""))
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


def measure_baseline(study: optuna.Study, space: SearchSpace, executor: Executor, experiment: Experiment,
                     log: Callable[[str], None], stop: StopRequest | None = None) -> TrialResult:
    """Build and measure the fp32 model (every layer fp32, unpruned, unfused), then queue the references: the
    front always contains or dominates them, since they are trials too."""
    stop = stop or StopRequest()
    log("measuring the fp32 baseline ...")
    executor.submit("baseline", Candidate(opt_level="all"))
    results = []
    while not results:
        if stop.requested:
            raise StudyStopped(stop.signal_name, 0, 1)
        results = executor.results(timeout=1.0)
    result = results[0][1]
    if not result.completed:
        raise StudyError(f"the fp32 baseline of task {experiment.task!r} does not build or run: {result.error}")
    meta = replace(StudyMeta.load(study), baseline_metric=result.metric,
                   baseline_latency_ms=result.latency.median_ms)
    meta.save(study)
    log(f"fp32 baseline: {meta.metric_name}={result.metric:.4f}, latency={result.latency.median_ms:.3f} ms")
    for label, params in space.references():
        study.enqueue_trial(params, user_attrs={"reference": label})
    return result


def latency_model_check(study: optuna.Study, space: SearchSpace, task, experiment: Experiment,
                        recorder: MlflowRecorder, trial_runs: dict[int, str], log: Callable[[str], None]):
    """Fit the per-layer latency model from the reference trials and check it on the others
    (:mod:`tuner.latency_check`). A model that cannot be fitted is reported, never fatal: the study is done."""
    from tuner.evaluate import artifact_feeds
    from tuner.latency_check import check_latency_model

    try:
        check, predicted = check_latency_model(
            study, space, experiment.run_dir,
            lambda path: artifact_feeds(task, path, experiment.latency.batch_size), experiment.latency.threads)
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


def recheck_front_latency(study: optuna.Study, executor: Executor, task, experiment: Experiment,
                          recorder: MlflowRecorder, trial_runs: dict[int, str]) -> dict[str, Any]:
    """Once no build runs, time the front again where it was timed and compare with the latency measured
    while the study was busy. The study's values stay as measured (the front is what its trials gave); the
    re-check goes to the study's attributes and to MLflow (``latency_alone_ms`` on the trial runs)."""
    from tuner.evaluate import artifact_feeds

    front = {t.number: t for t in study.best_trials}
    models = {n: experiment.run_dir / "artifacts" / TrialMeta.of(t).key / "model.onnx" for n, t in front.items()}
    models = {n: path for n, path in models.items() if path.is_file()}
    if not models:
        return {}
    feeds = artifact_feeds(task, next(iter(models.values())), experiment.latency.batch_size)
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
