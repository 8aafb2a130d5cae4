"""The executor interface: what the study loop needs from whatever runs evaluations.

A candidate goes through two explicit stages (:class:`Stage`): BUILD (build the artifact, score it with the
task's metric) and TIMING (time that artifact in ONNX Runtime). An executor takes candidates with
``submit``, hands back finished :class:`~tuner.core.records.TrialResult` s from ``results`` (COMPLETE after both
stages, or FAIL with the reason), times finished artifacts again with ``retime`` and releases what it holds
with ``close``. Artifacts land in ``<artifact_root>/<key>/`` on the driver's machine.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.core.candidate import Candidate
from tuner.core.records import FULL, Fidelity, LatencyStats, TrialResult


@dataclass(frozen=True)
class LatencyFeeds:
    """What a meter times an artifact on: the latency inputs and the task's further phases (``Task.latency_phases``),
    arrays by the artifact's input names."""

    main: Mapping[str, Any]
    phases: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Stage(enum.Enum):
    """Where a submitted candidate is."""

    BUILD = "build"  # waiting for a worker, or being built and scored
    TIMING = "timing"  # built, waiting for a latency meter, or being timed


@dataclass(frozen=True)
class Retime:
    """A finished artifact to time again: ``token`` names it in the answer; ``environment`` is where it was
    timed during the study (a distributed executor times it on that machine again)."""

    token: Hashable
    model_path: Path
    environment: Mapping[str, Any] = field(default_factory=dict)


class Executor(abc.ABC):
    """Runs evaluations for the study loop; see the module docstring for the contract."""

    @property
    @abc.abstractmethod
    def idle(self) -> int:
        """How many more candidates it can start now (the loop submits at most this many)."""

    @abc.abstractmethod
    def submit(self, token: Hashable, candidate: Candidate, fidelity: Fidelity = FULL) -> None:
        """Start evaluating ``candidate``; its result comes back from ``results`` under ``token``. Below full
        ``fidelity`` it is scored on a subset and/or not timed, and an untimed artifact stays where it was
        built (only its result comes back)."""

    @abc.abstractmethod
    def results(self, timeout: float = 1.0) -> list[tuple[Hashable, TrialResult]]:
        """Finished evaluations; waits at most ``timeout`` seconds for the first one."""

    @abc.abstractmethod
    def retime(self, artifacts: Sequence[Retime], feeds: Mapping[str, Any]) -> dict[Hashable, LatencyStats]:
        """Time finished artifacts again (for a quiet re-check once no build runs); those that cannot be timed
        are left out of the answer."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release workers and meters; the executor cannot be used afterwards."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# A job for the executor: the token its result comes back under, the candidate, how far to evaluate it.
Job = tuple[Hashable, Candidate, Fidelity]


def submit_and_poll(executor: Executor, next_job: Callable[[], Job | None], stop: Any = None, grace: bool = False
                    ) -> Iterator[tuple[Hashable, TrialResult]]:
    """The one loop that feeds an executor: submit ``next_job()`` while workers are free (until it returns None),
    yield ``(token, result)`` as each evaluation finishes, end when no job is left and none is in flight.

    ``stop`` (a `tuner.core.stop.StopRequest`): once one is requested, nothing more is submitted and
    StudyStopped is raised, at once or, with ``grace``, once what is in flight finished or the grace expired.
    """
    from tuner.core.stop import StudyStopped

    in_flight, exhausted = 0, False
    while True:
        stopping = stop is not None and stop.requested
        if stopping and (not grace or not in_flight or stop.expired()):
            finished = max(stop.in_flight_at_stop - in_flight, 0) if grace else 0
            raise StudyStopped(stop.signal_name, finished, in_flight)
        while not stopping and not exhausted and executor.idle:
            job = next_job()
            if job is None:
                exhausted = True
            else:
                executor.submit(*job)
                in_flight += 1
        if stop is not None:
            stop.in_flight = in_flight
        if exhausted and not in_flight:
            return
        for token, result in executor.results(timeout=1.0):
            in_flight -= 1
            if stop is not None:
                stop.in_flight = in_flight
            yield token, result


def evaluate_all(executor: Executor, jobs: Mapping[Hashable, Candidate], fidelity: Fidelity = FULL,
                 stop: Any = None) -> Iterator[tuple[Hashable, TrialResult]]:
    """Evaluate every candidate of ``jobs`` (token -> candidate), submitting as workers come free; yields
    ``(token, result)`` as each finishes. ``stop``: raise StudyStopped once one is requested, leaving what has
    not finished."""
    queue = list(jobs.items())
    return submit_and_poll(executor, lambda: (*queue.pop(0), fidelity) if queue else None, stop)
