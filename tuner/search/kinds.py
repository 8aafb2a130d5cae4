"""Which precision kinds run faster than fp32 on this machine, decided by building and timing each kind's
uniform model (the study's references), not by a table.

`search_space: auto` does it before a new study's first trial (`auto_kinds: measured`, the default): the kinds
whose uniform model is not faster than the fp32 one here, or does not build or run, are left out of the
study's space. `tuner space --measure` does the same and prints the space.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tuner.core.errors import StudyError
from tuner.core.precision import FP32
from tuner.core.records import FULL, Fidelity, TrialResult, reference_kind
from tuner.core.stop import StopRequest
from tuner.executors.base import Executor, evaluate_all
from tuner.executors.inprocess import InProcessExecutor
from tuner.experiment import Experiment
from tuner.space import SearchSpace, SpaceFile
from tuner.task import Task

UNSCORED = Fidelity(samples=0)  # built and timed: the decision needs latency only


@dataclass(frozen=True)
class KindTiming:
    """One uniform model measured: its kind, median latency (None: it failed, ``error`` says why) and, when
    scored, its metric."""

    label: str  # "fp32" or "uniform <kind>"
    latency_ms: float | None
    ratio: float | None  # to the fp32 model's latency
    metric: float | None = None
    error: str | None = None
    key: str = ""  # the artifact's
    phases: Mapping[str, float] = field(default_factory=dict)  # Task.latency_phases: median ms each
    phase_ratios: Mapping[str, float] = field(default_factory=dict)  # each to the fp32 model's

    @property
    def kind(self) -> str:
        return reference_kind(self.label)

    @property
    def kept(self) -> bool:
        return self.kind == FP32 or (self.ratio is not None and self.ratio < 1.0)

    def line(self, metric_name: str) -> str:
        if self.latency_ms is None:
            return f"{self.label}: failed ({(self.error or '').splitlines()[0][:120]}), left out"
        scored = "" if self.metric is None else f", {metric_name} {self.metric:.4f}"
        phases = "".join(f"; {name} {ms:.3f} ms ({self.phase_ratios[name]:.2f}x fp32)"
                         for name, ms in self.phases.items())
        return (f"{self.label}: {self.latency_ms:.3f} ms ({self.ratio:.2f}x fp32){phases}{scored}"
                + ("" if self.kept else ", left out: not faster"))


def time_uniform_kinds(executor: Executor, space: SearchSpace, stop: StopRequest | None = None,
                       scored: bool = False) -> list[KindTiming]:
    """fp32 and each kind's uniform model, built and timed (and scored, with ``scored``) on ``executor``: a
    study's workers and meter (on the latency resource), or this process."""
    references = {label: space.decode(params) for label, params in space.references()}
    results = dict(evaluate_all(executor, references, FULL if scored else UNSCORED, stop))
    return kind_timings({label: results[label] for label in references})


def kind_timings(results: Mapping[str, TrialResult]) -> list[KindTiming]:
    fp32 = results[FP32]
    if not fp32.completed:
        raise StudyError(f"the fp32 model does not build or run: {fp32.error}")
    timings = []
    for label, result in results.items():
        if not result.completed:
            timings.append(KindTiming(label, None, None, error=result.error or "failed", key=result.key))
            continue
        ms, phases = result.latency.median_ms, result.latency.phases
        ratios = {name: v / fp32.latency.phases[name] for name, v in phases.items() if fp32.latency.phases.get(name)}
        timings.append(KindTiming(label, ms, ms / fp32.latency.median_ms, result.metric, key=result.key,
                                  phases={k: v for k, v in phases.items() if k in ratios}, phase_ratios=ratios))
    return timings


def keep_fast(space_file: SpaceFile, timings: list[KindTiming]) -> SpaceFile:
    """The space file without the kinds that were not faster than fp32 (a rule left with none keeps fp32)."""
    slow = {t.kind for t in timings if not t.kept}
    rules = tuple(replace(rule, precision=tuple(c for c in rule.precision if c not in slow) or (FP32,))
                  for rule in space_file.rules)
    return replace(space_file, rules=rules)


def keep_fast_kinds(space: SearchSpace, task: Task, experiment: Experiment, log: Callable[[str], None] = print,
                    scored: bool = True) -> tuple[SpaceFile, list[str]]:
    """The space file without the choices whose uniform model is not faster than the fp32 one here (or fails),
    and one line per uniform model saying what was measured (`tuner space --measure`; built in a temporary
    folder)."""
    log(f"measuring {len(space.references())} uniform models (fp32 and one per kind) ...")
    with tempfile.TemporaryDirectory(prefix="tuner-space-") as tmp, \
            InProcessExecutor(experiment.task_ref(), experiment.eval_settings(), Path(tmp), task=task) as executor:
        timings = time_uniform_kinds(executor, space, scored=scored)
    lines = [t.line(task.evaluation.metric_name) for t in timings]
    return keep_fast(space.file, timings), lines
