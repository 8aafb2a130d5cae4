"""Typed records that cross stages: what one evaluation produced, what the study stores about a trial and
about itself, and the artifact record (``candidate.json``).

Standard library only: the driver, `tuner front` and `tuner pick` read these without torch, ONNX Runtime or
Ray. Every record converts to and from plain JSON data (``to_dict`` / ``from_dict``), and ``from_dict`` reads
what earlier versions of `tuner` wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"
FAIL = "FAIL"
# Version of the artifact record format (`candidate.json`); files without a version are format 0.
ARTIFACT_FORMAT = 1


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one artifact in one ORT session: warmed up, repeated."""

    median_ms: float
    p90_ms: float
    cv: float  # coefficient of variation: std / mean of the repeats
    repeats: int
    # the task's further latency phases (Task.latency_phases), median ms each: a decoder's prefill beside its
    # decode step. Recorded, not optimized; the same session, warm-up and repeats
    phases: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "phases": dict(self.phases)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LatencyStats | None:
        if not data:
            return None
        return cls(float(data["median_ms"]), float(data["p90_ms"]), float(data["cv"]), int(data.get("repeats", 0)),
                   {str(k): float(v) for k, v in (data.get("phases") or {}).items()})


@dataclass(frozen=True)
class Fidelity:
    """How far an evaluation goes: score on ``samples`` of the evaluation set (None: all of it; 0: not scored),
    and time the artifact or not. The study's trials run at full fidelity; the sensitivity pass scores subsets,
    untimed; measuring which kinds run fast times uniform models, unscored."""

    samples: int | None = None
    timed: bool = True
    # Screening: with ``threshold`` set, the subset is only a first look. A candidate whose estimate is worse
    # than ``threshold`` by more than ``z`` standard errors stops there (never timed); any other is scored on
    # the whole set and timed.
    threshold: float | None = None
    maximize: bool = True
    z: float = 3.0

    @property
    def full(self) -> bool:
        return self.samples is None and self.timed

    @property
    def screens(self) -> bool:
        return self.samples is not None and self.threshold is not None

    def clearly_infeasible(self, estimate: float, stderr: float) -> bool:
        if self.maximize:
            return estimate + self.z * stderr < self.threshold
        return estimate - self.z * stderr > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Fidelity:
        return cls(**_known_fields(cls, data)) if data else cls()


FULL = Fidelity()


@dataclass(frozen=True)
class TrialResult:
    """What one evaluation of a candidate produced, from the worker to Optuna, MLflow, the CSVs, pick and verify.

    ``state`` is COMPLETE (built, scored and timed) or FAIL (``error`` says at which stage and why). Before the
    timing stage a COMPLETE result has ``latency`` None.
    """

    key: str
    candidate: Mapping[str, Any]  # Candidate.to_dict()
    state: str = COMPLETE
    error: str | None = None
    traceback: str | None = None
    metric: float | None = None
    extra_metrics: Mapping[str, float] = field(default_factory=dict)
    latency: LatencyStats | None = None
    size_mb: float | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage
    artifact_dir: str | None = None
    artifact_sha256: str | None = None
    environment: Mapping[str, Any] = field(default_factory=dict)  # where latency was taken + package versions
    cached_build: bool = False
    cached_export: bool = False
    model_stats: Mapping[str, Any] = field(default_factory=dict)  # MACs/params (ratios to unpruned), recovery
    worker_deaths: int = 0  # workers lost while building it (it was retried)
    memory: Mapping[str, float] = field(default_factory=dict)  # peak RSS (MB) of each process, per stage
    # scored on a subset of the evaluation set: how many samples, and the standard error of ``metric`` as an
    # estimate of the full-set metric (None: scored on all of it)
    scored_samples: int | None = None
    metric_stderr: float | None = None
    screened_out: bool = False  # stopped after the subset: clearly infeasible, never timed (Fidelity.threshold)
    # screened out as its pruned fp32 model, scored in torch before it was exported, quantized or built
    screened_before_build: bool = False
    disk_full: bool = False  # failed because a write was refused for space: the study stops, the trial runs again

    def __post_init__(self) -> None:
        if self.state not in (COMPLETE, FAIL):
            raise ValueError(f"state must be {COMPLETE!r} or {FAIL!r}, but got {self.state!r}.")

    @property
    def completed(self) -> bool:
        return self.state == COMPLETE

    def failed(self, reason: str, traceback: str | None = None) -> TrialResult:
        """This result as a failure (latency dropped: a failed trial has no measured values)."""
        return replace(self, state=FAIL, error=reason, traceback=traceback or self.traceback, latency=None)

    def with_timings(self, **seconds: float) -> TrialResult:
        return replace(self, timings={**self.timings, **seconds})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency"] = data["latency"] or {}  # the outcome.json layout: {} when not timed
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        """From ``to_dict`` output, including the outcome dicts (``outcome.json``) of earlier versions."""
        values = _known_fields(cls, data)
        values["latency"] = LatencyStats.from_dict(data.get("latency"))
        values["worker_deaths"] = int(data.get("worker_deaths") or 0)
        return cls(**values)


def _known_fields(cls, data: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The entries of ``data`` that are fields of the dataclass ``cls``: records ignore keys they do not know,
    so files and attributes written by other versions still load."""
    return {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name not in skip}


# -- what the study stores ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyMeta:
    """What a study remembers about itself, kept in the Optuna storage (the study's user attributes).

    Load it with ``StudyMeta.load(study)``, change it with ``dataclasses.replace``, write it with ``save``.
    The attribute names are those earlier versions wrote, so their journals load as they are.
    """

    uid: str | None = None  # tells this study's MLflow runs from an older study of the same name
    metric_name: str = "metric"
    task: str | None = None
    task_ref: Mapping[str, Any] | None = None  # what `tuner verify` needs to rebuild and re-measure
    eval_settings: Mapping[str, Any] | None = None
    opt_levels: tuple[str, ...] = ()
    max_metric_drop: float | None = None
    space_signature: str | None = None
    experiment_file: str | None = None  # what `tuner resume STUDY` runs again
    tracking_uri: str | None = None  # where the study logs; a continued study keeps logging there
    baseline_metric: float | None = None
    baseline_latency_ms: float | None = None
    latency_check: Mapping[str, Any] = field(default_factory=dict)  # the front re-timed with no build running
    seeded: bool = False  # the predicted front was queued (once per study, after the references)
    noise_floor_ms: tuple[float, ...] = ()  # the fp32 model's medians timed in a row after the baseline
    direction: str = "maximize"  # of the metric: the study's first objective (not an attribute)

    @classmethod
    def load(cls, study) -> StudyMeta:
        attrs = study.user_attrs
        values = _known_fields(cls, attrs, skip=("direction",))
        for name in ("opt_levels", "noise_floor_ms"):
            if name in values:
                values[name] = tuple(values[name])
        values["direction"] = study.directions[0].name.lower()
        return cls(**values)

    def save(self, study) -> None:
        """Write the attributes that differ from what the storage has."""
        attrs = study.user_attrs
        for f in fields(self):
            if f.name == "direction":
                continue
            value = getattr(self, f.name)
            value = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping) else value
            if (f.name in attrs and attrs[f.name] == value) or (f.name not in attrs and value in (None, {}, [])):
                continue
            study.set_user_attr(f.name, value)

    @property
    def has_baseline(self) -> bool:
        return self.baseline_metric is not None and self.baseline_latency_ms is not None

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def score(self, metric: float) -> float:
        """``metric`` with higher better, whichever way the task's metric points."""
        return metric if self.maximize else -metric

    def drop(self, metric: float) -> float | None:
        """How much worse than the fp32 baseline ``metric`` is (negative: better); None before the baseline."""
        return None if self.baseline_metric is None else metric_drop(self.baseline_metric, metric, self.maximize)

    def metric_threshold(self) -> float | None:
        """The lowest (maximized) or highest (minimized) metric the constraint allows, or None."""
        if self.max_metric_drop is None or self.baseline_metric is None:
            return None
        return self.baseline_metric - self.max_metric_drop if self.maximize else \
            self.baseline_metric + self.max_metric_drop


def metric_drop(baseline: float, metric: float, maximize: bool) -> float:
    """How much worse than ``baseline`` ``metric`` is (negative: better), whichever way the metric points."""
    return (baseline - metric) if maximize else (metric - baseline)


UNIFORM = "uniform "  # a reference label: "fp32", or "uniform <kind>" for a uniform-precision model


def reference_label(kind: str, fp32: str = "fp32") -> str:
    """The label of the reference trial whose every layer is ``kind``."""
    return kind if kind == fp32 else UNIFORM + kind


def reference_kind(label: str) -> str:
    """The precision kind a reference label names (the inverse of :func:`reference_label`)."""
    return label.removeprefix(UNIFORM)


@dataclass(frozen=True)
class TrialMeta:
    """What a trial records beside its values (the trial's user attributes), written from a TrialResult."""

    key: str = ""
    summary: str = ""
    reference: str = ""  # "fp32", "int8", ... for the reference trials; "" otherwise
    stage: str = ""  # where the trial came from: "reference", "plan", "seed" or "sampler" (see `origin`)
    plan: str = ""  # for a plan trial, which point of the plan it is (tuner.search.plan)
    recovery_budget: int = 1  # a queued trial's multiple of the distillation budget (Candidate.recovery_budget)
    mlflow_run_id: str | None = None
    metric_drop: float | None = None
    latency_p90_ms: float | None = None
    latency_cv: float | None = None
    latency_phases_ms: Mapping[str, float] = field(default_factory=dict)  # Task.latency_phases, median ms each
    size_mb: float | None = None
    extra_metrics: Mapping[str, float] = field(default_factory=dict)
    artifact_sha256: str | None = None
    model_stats: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    fail_reason: str | None = None
    interrupted: bool = False
    worker_deaths: int = 0
    # screened on a subset and stopped there (PRUNED): the estimate and how sure it is
    screened_out: bool = False
    scored_samples: int | None = None
    metric_stderr: float | None = None
    screened_before_build: bool = False  # scored as its pruned fp32 model, never exported or quantized
    # queued by the sensitivity pass's seeding: where on the predicted path, and what was predicted
    seed: str = ""
    seed_step: int | None = None
    seed_predicted_drop: float | None = None
    seed_predicted_ms: float | None = None
    # re-timed beside its closest front rival (the front race): its latency as first measured, and the race
    latency_tuning_ms: float | None = None
    race: Mapping[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The trial's stage; for trials recorded without one, worked out from what they carry."""
        return self.stage or ("reference" if self.reference else "seed" if self.seed else "sampler")

    def queued_attrs(self) -> dict[str, Any]:
        """The attributes a trial queued again keeps: where it came from."""
        kept = {k: v for k, v in (("reference", self.reference), ("stage", self.stage), ("plan", self.plan)) if v}
        return kept | ({"recovery_budget": self.recovery_budget} if self.recovery_budget != 1 else {})

    @property
    def reference_kind(self) -> str:
        """The precision of a reference trial ("fp32", "int8", ...); "" for other trials."""
        return reference_kind(self.reference)

    @classmethod
    def of(cls, trial) -> TrialMeta:
        """From an Optuna trial (frozen or running)."""
        return cls(**_known_fields(cls, trial.user_attrs))

    @staticmethod
    def attrs_of(result: TrialResult, metric_drop: float | None) -> dict[str, Any]:
        """The attributes a finished trial records from its result."""
        attrs: dict[str, Any] = {}
        if result.worker_deaths:
            attrs["worker_deaths"] = result.worker_deaths
        if not result.completed:
            attrs["fail_reason"] = result.error
            return attrs
        if result.screened_out:  # stopped after the subset: its estimate, and how sure it is
            attrs.update(key=result.key, metric_drop=metric_drop, screened_out=True,
                         scored_samples=result.scored_samples, metric_stderr=result.metric_stderr,
                         timings=dict(result.timings))
            if result.screened_before_build:
                attrs["screened_before_build"] = True
            return attrs
        if result.latency is None:
            raise ValueError(f"a COMPLETE result must carry its latency, but {result.key!r} has none.")
        attrs.update(key=result.key, metric_drop=metric_drop, latency_p90_ms=result.latency.p90_ms,
                     latency_cv=result.latency.cv, latency_phases_ms=dict(result.latency.phases), size_mb=result.size_mb, extra_metrics=dict(result.extra_metrics),
                     artifact_sha256=result.artifact_sha256, model_stats=dict(result.model_stats),
                     environment=dict(result.environment), timings=dict(result.timings))
        return attrs


# -- the artifact record --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArtifactRecord:
    """``candidate.json``: what an artifact is (written beside ``model.onnx`` by the build), and, once a trial
    measured it, how it scored and where (logged to MLflow with the trial, written by `tuner pick`).

    One format for all three; ``format`` is its version. Files without one (format 0) load too: every layout
    `tuner` wrote before carries at least ``candidate``.
    """

    candidate: Mapping[str, Any]
    key: str | None = None
    task: str | None = None
    task_fingerprint: str | None = None
    fused_operators: Mapping[str, int] = field(default_factory=dict)
    kernels: Mapping[str, str | None] = field(default_factory=dict)  # layer -> op type ORT runs it with
    layer_nodes: Mapping[str, str] = field(default_factory=dict)  # layer -> ONNX node
    layer_weights: Mapping[str, str] = field(default_factory=dict)  # layer -> its weight initializer in the export
    # Filled once a trial measured it:
    study: str | None = None
    trial: int | None = None
    mlflow_run_id: str | None = None
    artifact_sha256: str | None = None
    summary: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    baseline: Mapping[str, float] = field(default_factory=dict)
    runtime: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    registered_model: Mapping[str, Any] = field(default_factory=dict)
    format: int = ARTIFACT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """Plain data; empty sections are left out, so the file only says what is known."""
        data = {"format": self.format}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "format" or value is None or (isinstance(value, Mapping) and not value):
                continue
            data[f.name] = dict(value) if isinstance(value, Mapping) else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "candidate.json") -> ArtifactRecord:
        version = data.get("format", 0)
        if not isinstance(version, int) or version > ARTIFACT_FORMAT:
            raise ValueError(f"{source}: artifact record format {version!r} is newer than this tuner reads "
                             f"(format {ARTIFACT_FORMAT}); upgrade tuner.")
        if "candidate" not in data:
            raise ValueError(f"{source}: not an artifact record (no 'candidate' field).")
        values = _known_fields(cls, data)
        values["format"] = ARTIFACT_FORMAT
        return cls(**values)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def read(cls, path: str | Path) -> ArtifactRecord:
        return cls.from_dict(json.loads(Path(path).read_text()), str(path))
