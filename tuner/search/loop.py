"""The ask/tell loop, as Optuna's own `study/_optimize.py` writes it: the loop asks, submits and tells; what else
happens when a trial finishes (MLflow, progress, the live front, timing statistics) is a callback.

Two kinds of hook, in this order, for each finished trial:

* ``recorders(trial, result)`` run *before* Optuna is told: they make the result durable (the MLflow trial
  run). A driver that dies between the two finds the result there on resume and adopts it, so every trial is
  recorded exactly once.
* ``callbacks(study, finished)`` run after: side effects that read the told study.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.core.candidate import Candidate
from tuner.core.disk import OutOfDiskSpace, free_bytes
from tuner.core.records import FULL, Fidelity, StudyMeta, TrialMeta, TrialResult
from tuner.core.stop import StopRequest
from tuner.executors.base import Executor, Job, submit_and_poll
from tuner.search.samplers import METRIC_CONSTRAINT
from tuner.space import SearchSpace


@dataclass(frozen=True)
class FinishedTrial:
    """What a callback receives: the told trial, its result, when the result came back, and progress."""

    trial: FrozenTrial
    result: TrialResult
    received: float  # time.perf_counter() when the executor handed the result back
    done: int  # trials finished toward the budget, this one included
    budget: int
    in_flight: int = 0  # trials submitted and not yet finished, this one excluded


Recorder = Callable[[optuna.Trial, TrialResult], None]
Refiner = Callable[[optuna.Study, optuna.Trial, TrialResult], TrialResult]
Callback = Callable[[optuna.Study, FinishedTrial], None]


# The constraint a failed candidate violates. Optuna's samplers learn nothing from a FAIL trial; a PRUNED one
# with a violated constraint is an infeasible point to TPE, which then samples less around it. (GP reads
# COMPLETE trials only: `tuner.search.samplers` shows it such a trial as an infeasible COMPLETE one.)
FAILED_CONSTRAINT = "failed"


def tell(study: optuna.Study, trial: optuna.Trial, result: TrialResult, meta: StudyMeta) -> bool:
    """Record a result on its trial (values, metric-drop constraint, attributes); returns whether it completed.

    A failed candidate (it did not build, run or score) is told PRUNED with the constraint ``failed`` violated
    and its ``fail_reason``; a screened-out one PRUNED with its estimated metric drop; a stop's interrupted
    trial FAIL (it is queued again)."""
    drop = None
    if result.completed:
        drop = meta.drop(result.metric)
        if meta.max_metric_drop is not None:  # <= 0 is feasible
            trial.set_constraint(METRIC_CONSTRAINT, drop - meta.max_metric_drop)
    for key, value in TrialMeta.attrs_of(result, drop).items():
        trial.set_user_attr(key, value)
    if not result.completed:  # infeasible to the sampler: Optuna's samplers skip a FAIL trial as if never tried
        trial.set_constraint(FAILED_CONSTRAINT, 1.0)
        study.tell(trial, state=TrialState.PRUNED)
        return False
    if result.screened_out:  # PRUNED with its constraint violated: TPE learns from it as an infeasible trial
        study.tell(trial, state=TrialState.PRUNED)
        return False
    study.tell(trial, [result.metric, result.latency.median_ms])
    return True


def requeue(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> None:
    """Queue the parameters of a trial that was stopped again, keeping where it came from."""
    study.enqueue_trial(trial.params, user_attrs=TrialMeta.of(trial).queued_attrs())


def is_feasible(trial: FrozenTrial, max_drop: float | None) -> bool:
    """Complete and within the metric-drop constraint (any complete trial, without one)."""
    drop = TrialMeta.of(trial).metric_drop
    return trial.state == TrialState.COMPLETE and drop is not None and (max_drop is None or drop <= max_drop)


def failed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Candidates that failed (a reason recorded), not those a stop interrupted."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED, TrialState.FAIL))
            if (meta := TrialMeta.of(t)).fail_reason and not meta.interrupted]


def n_finished(study: optuna.Study) -> int:
    """Trials that count toward the budget: COMPLETE, screened out (PRUNED) or FAIL, except those a stop
    interrupted (re-run)."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return len([t for t in study.get_trials(deepcopy=False, states=states) if not TrialMeta.of(t).interrupted])


def candidate_of(space: SearchSpace, trial: optuna.Trial) -> Candidate:
    """What ``trial`` builds: its parameters, with the longer recovery a queued plan point carries beside them."""
    return replace(space.decode(trial.params), recovery_budget=TrialMeta.of(trial).recovery_budget)


class StudyLoop:
    """Ask for candidates while the executor has room, tell results as they come, until ``budget`` trials."""

    def __init__(self, study: optuna.Study, space: SearchSpace, executor: Executor, budget: int,
                 recorders: Sequence[Recorder] = (), callbacks: Sequence[Callback] = (),
                 stop: StopRequest | None = None, fidelity: Callable[[optuna.Trial], Fidelity] | None = None,
                 refiners: Sequence[Refiner] = ()):
        """``fidelity``: how far each trial's evaluation goes (default: full, built, scored and timed);
        ``refiners`` may replace a result before it is recorded (a close call on the front re-timed)."""
        self.study = study
        self.refiners = list(refiners)
        self.fidelity = fidelity or (lambda trial: FULL)
        self.stop = stop or StopRequest()
        self.space = space
        self.executor = executor
        self.budget = budget
        self.recorders = list(recorders)
        self.callbacks = list(callbacks)

    def run(self, until: int | None = None) -> None:
        """Until ``until`` trials are finished (default: the budget); may be called again to go on."""
        budget = self.budget if until is None else min(until, self.budget)
        dists = self.space.distributions()
        meta = StudyMeta.load(self.study)
        done = n_finished(self.study)
        in_flight: dict[int, optuna.Trial] = {}

        def next_job() -> Job | None:
            if done + len(in_flight) >= budget:
                return None
            trial = self.study.ask(fixed_distributions=dists)
            candidate = candidate_of(self.space, trial)
            trial.set_user_attr("summary", candidate.summary())
            trial.set_user_attr("stage", TrialMeta.of(trial).origin)
            in_flight[trial.number] = trial
            return trial.number, candidate, self.fidelity(trial)

        try:
            for number, result in submit_and_poll(self.executor, next_job, self.stop, grace=True):
                received = time.perf_counter()
                if result.disk_full:  # not the candidate's fault: stop as on Ctrl-C, the trial queued again
                    raise OutOfDiskSpace(f"trial {number}: {result.error}", free_bytes(Path(result.artifact_dir
                                                                                             or ".")))
                for refine in self.refiners:
                    result = refine(self.study, in_flight[number], result)
                with self.stop.shielded():
                    trial = in_flight.pop(number)
                    for record in self.recorders:
                        record(trial, result)
                    tell(self.study, trial, result, meta)
                done += 1
                finished = FinishedTrial(self.study.get_trials(deepcopy=False)[number], result, received, done,
                                         self.budget, len(in_flight))
                for callback in self.callbacks:
                    callback(self.study, finished)
        finally:
            for trial in in_flight.values():  # stopped early: leave nothing RUNNING, run them again next time
                trial.set_user_attr("fail_reason", "interrupted: the study stopped")
                trial.set_user_attr("interrupted", True)
                requeue(self.study, trial)
                self.study.tell(trial, state=TrialState.FAIL)


# -- callbacks ------------------------------------------------------------------------------------------------

class TimingStats:
    """Seconds per stage of every completed trial (a failure stops early, so its stages would pull the medians
    down), plus ``orchestration``: time spent on neither building,
    scoring, timing nor waiting for a meter (Ray's round trips and transfers, the driver writing the artifact,
    MLflow and Optuna). Put it first among the callbacks: it counts the time since the result came back."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.peak_rss_mb: dict[str, float] = {}  # the largest peak of each process kind over all trials

    def __call__(self, study: optuna.Study, finished: FinishedTrial) -> None:
        for process, mb in finished.result.memory.items():
            self.peak_rss_mb[process] = max(self.peak_rss_mb.get(process, 0.0), mb)
        if not finished.result.completed or finished.result.screened_out:
            return
        row = dict(finished.result.timings)
        row["orchestration"] = row.get("wall", 0.0) - row.get("worker_total", 0.0) - row.get("latency", 0.0) \
            - row.get("latency_wait", 0.0) + (time.perf_counter() - finished.received)
        self.rows.append(row)


class Progress:
    """A tqdm bar: trials done, failures, front size and the fastest front member."""

    def __init__(self, study: optuna.Study, budget: int, enabled: bool, start: bool = True):
        self.bar: Any = None
        self.study, self.budget, self.enabled = study, budget, enabled
        self.metric_name, self.failed = "", 0
        if start:
            self.start()

    def start(self) -> None:
        """Show the bar from the trials the study has now (the baseline and references are measured first)."""
        self.metric_name = StudyMeta.load(self.study).metric_name
        self.failed = len(failed_trials(self.study))
        if self.enabled and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.budget, initial=min(n_finished(self.study), self.budget), unit="trial",
                            dynamic_ncols=True)

    def __call__(self, study: optuna.Study, finished: FinishedTrial) -> None:
        self.failed += not finished.result.completed
        if self.bar is None:
            return
        front = study.best_trials
        best = ""
        if front:
            fastest = min(front, key=lambda t: t.values[1])
            best = f"fastest={fastest.values[1]:.3f}ms@{self.metric_name}={fastest.values[0]:.4f}"
        self.bar.set_postfix_str(f"failed={self.failed} front={len(front)} {best}")
        self.bar.update(1)

    def write(self, line: str) -> None:
        """Print a line above the bar (or plainly, without one)."""
        if self.bar is None:
            print(line)
        else:
            from tqdm import tqdm

            tqdm.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Every:
    """Calls ``action(done)`` every ``n`` finished trials, except after the last one (the study's end does it)."""

    def __init__(self, n: int, action: Callable[[int], None]):
        self.n = n
        self.action = action
        self.seconds: list[float] = []  # what each call took

    def __call__(self, study: optuna.Study, finished: FinishedTrial) -> None:
        if finished.done % self.n == 0 and finished.done < finished.budget:
            start = time.perf_counter()
            self.action(finished.done)
            self.seconds.append(time.perf_counter() - start)
