"""Racing the front's latency: a close call is timed again, side by side, before it displaces anything.

The machine's noise floor is measured once, after the baseline: the fp32 artifact timed ``rounds`` times on
the study's own meter; the spread of those medians is how far apart two timings of one artifact land.

A new feasible trial whose latency lands within that spread of a front member it would beat on the metric
(or tie) is a close call: a single lucky timing could put it on the front. It is timed again interleaved
with that neighbour (``rounds`` times each, more on a noisier machine), and its latency becomes the
neighbour's recorded latency times the ratio of their medians measured side by side: the comparison that
decides front membership is made in one sitting, not across two noisy moments. The trial keeps its first
timing as ``latency_tuning_ms`` and the race as ``race`` attributes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna

from tuner.core.paths import MODEL
from tuner.core.records import StudyMeta, TrialMeta, TrialResult
from tuner.executors.base import Executor, Retime


@dataclass(frozen=True)
class NoiseFloor:
    """Medians of one artifact timed ``len(medians_ms)`` times in a row, and their relative spread."""

    medians_ms: tuple[float, ...]

    @property
    def spread(self) -> float:
        middle = statistics.median(self.medians_ms)
        return (max(self.medians_ms) - min(self.medians_ms)) / middle if middle > 0 else 0.0

    @property
    def race_rounds(self) -> int:
        """Re-timings per side in a race: more where single timings wander further."""
        return 3 if self.spread <= 0.05 else 5 if self.spread <= 0.15 else 9

    def line(self) -> str:
        return (f"noise floor: the fp32 model timed {len(self.medians_ms)} times in a row: medians "
                f"{min(self.medians_ms):.3f}-{max(self.medians_ms):.3f} ms (spread {self.spread:.1%}); close calls "
                f"on the front are re-timed {self.race_rounds} times side by side")


def measure_noise_floor(executor: Executor, model_path: Path, feeds: dict[str, Any],
                        environment: dict[str, Any], rounds: int = 5) -> NoiseFloor | None:
    timed = executor.retime([Retime(i, model_path, environment) for i in range(rounds)], feeds)
    medians = tuple(timed[i].median_ms for i in sorted(timed))
    return NoiseFloor(medians) if len(medians) >= 2 else None


class FrontRace:
    """A loop refiner (runs on each result before it is recorded and told)."""

    def __init__(self, executor: Executor, artifact_root: Path, feeds_for: Callable[[Path], dict],
                 noise: NoiseFloor, log: Callable[[str], None] = print):
        self.executor = executor
        self.artifact_root = artifact_root
        self.feeds_for = feeds_for
        self.noise = noise
        self.log = log
        self.races = 0

    def rival(self, study: optuna.Study, result: TrialResult, meta: StudyMeta) -> optuna.trial.FrozenTrial | None:
        """The front member this result might displace on the strength of its latency alone, if the call is
        within the noise floor; the closest in latency."""
        threshold = meta.metric_threshold()
        def better(a: float, b: float) -> bool:
            return meta.score(a) >= meta.score(b)
        if threshold is not None and not better(result.metric, threshold):
            return None  # infeasible: it cannot enter the front anyway
        close = [t for t in study.best_trials
                 if better(result.metric, t.values[0])
                 and abs(result.latency.median_ms - t.values[1]) <= self.noise.spread * t.values[1]]
        return min(close, key=lambda t: abs(result.latency.median_ms - t.values[1]), default=None)

    def __call__(self, study: optuna.Study, trial: optuna.Trial, result: TrialResult) -> TrialResult:
        if not result.completed or result.latency is None or TrialMeta.of(trial).reference:
            return result
        meta = StudyMeta.load(study)
        rival = self.rival(study, result, meta)
        if rival is None:
            return result
        mine = Path(result.artifact_dir) / MODEL
        theirs = self.artifact_root / TrialMeta.of(rival).key / MODEL
        if not mine.is_file() or not theirs.is_file():
            return result
        rounds = self.noise.race_rounds
        jobs = []
        for i in range(rounds):  # interleaved: A B A B ..., each on the meter that timed it
            jobs.append(Retime(("new", i), mine, result.environment))
            jobs.append(Retime(("rival", i), theirs, TrialMeta.of(rival).environment))
        timed = self.executor.retime(jobs, self.feeds_for(mine))
        new = [timed[k].median_ms for k in timed if k[0] == "new"]
        old = [timed[k].median_ms for k in timed if k[0] == "rival"]
        if len(new) < 2 or len(old) < 2:
            return result
        ratio = statistics.median(new) / statistics.median(old)
        raced = rival.values[1] * ratio
        self.races += 1
        self.log(f"race: trial {trial.number} timed {result.latency.median_ms:.3f} ms, within the noise floor of "
                 f"front trial {rival.number} ({rival.values[1]:.3f} ms); side by side x{rounds}: ratio "
                 f"{ratio:.3f} -> {raced:.3f} ms")
        trial.set_user_attr("latency_tuning_ms", result.latency.median_ms)
        trial.set_user_attr("race", {"rival": rival.number, "rounds": rounds, "ratio": ratio})
        return replace(result, latency=replace(result.latency, median_ms=raced))
