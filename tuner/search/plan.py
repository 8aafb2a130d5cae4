"""The default plan: after the references, build the mixes where good models usually are, before any sampler.

Uniform references leave two gaps that a sampler rarely fills (most of its draws change every layer at once):

- **repair**: the fastest kinds often just miss the constraint because of a few layers (activation outliers feed
  a few projections of every transformer block; a few convolutions of a CNN carry most of static int8's error).
  The uniformly quantized model with its most sensitive layer groups kept at a safer kind is feasible and nearly
  as fast. The groups are ranked by the sensitivity pass; how many to keep is searched on built, measured models:
  1, 2, 4, ... groups until one is feasible, then halving the interval between the largest infeasible and the
  smallest feasible count (:class:`RepairSearch`). Once a count is feasible, two follow-ups: which layers of the
  last group kept safe the mix really needs (halving them, :class:`NarrowSearch`: a role kept fp32 in every block
  is often needed in a few blocks only), and mixes that keep more groups safe, spaced between the repaired mix and
  the best feasible reference as the fill points are (:func:`spaced_points`).
- **fill**: between the fastest feasible reference and fp32 the front is empty, so a user with a tighter
  constraint gets fp32. Mixes that keep the k most sensitive groups fp32 fill it, k chosen so that their
  predicted latencies (the latency model from the references) are evenly spaced on a log scale.
- **prune**: where the space prunes, the fastest feasible reference with every group pruned alike, one ratio step
  further per build while the last was feasible (:class:`PruneLadder`), once the repair is done.

The plan's points are trials like any other (queued in the study, built, scored and timed by the workers), with
``stage`` "plan" and ``plan`` saying which point they are; the sampler takes the budget that is left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.core.candidate import Candidate
from tuner.core.precision import FP32
from tuner.core.records import StudyMeta, TrialMeta
from tuner.search.latency_check import fit_from_references
from tuner.search.loop import is_feasible
from tuner.search.repair import (
    NarrowSearch,
    PlanPoint,
    RepairSearch,
    mix,
    spaced_points,
)
from tuner.search.seeding import publish_sensitivity
from tuner.search.sensitivity import (
    SensitivityRow,
    probes,
    ranking,
    run_sensitivity,
    target_stderr,
)
from tuner.space import SearchSpace

REPAIR_WITHIN = 1.2  # the kind repaired runs within this factor of the fastest infeasible one
# The ladder's few points distill this many times the experiment's budget: on the digits CNN, every group pruned by
# 0.25 scored 357/360 digits after 100 steps and 358/360 (fp32's) after 300 (experiments/search/plan/README.md).
LADDER_RECOVERY_BUDGET = 4


@dataclass(frozen=True)
class Reference:
    """A measured uniform reference, as the plan reads it."""

    kind: str
    drop: float
    latency_ms: float
    feasible: bool


def measured_references(study: optuna.Study, max_drop: float | None, baseline_ms: float | None = None
                        ) -> list[Reference]:
    """The completed reference trials (fp32 included), fastest first. Where the fp32 trial did not complete (its
    timing failed: a meter killed for memory by a 270M-parameter model's fp32 build), the fp32 baseline timed
    before the study, ``baseline_ms``, stands in for it."""
    out = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        meta = TrialMeta.of(trial)
        if meta.reference and meta.metric_drop is not None:
            out.append(Reference(meta.reference_kind, meta.metric_drop, trial.values[1], is_feasible(trial, max_drop)))
    if baseline_ms is not None and not any(r.kind == FP32 for r in out):
        out.append(Reference(FP32, 0.0, baseline_ms, True))
    return sorted(out, key=lambda r: r.latency_ms)


class ShareModel:
    """A latency model with no profile: each searched layer weighs alike, at its kind's uniform model's latency."""

    def __init__(self, layers: Sequence[str], references: Sequence[Reference]):
        self.layers, self.ms = list(layers), {r.kind: r.latency_ms for r in references}

    def predict(self, candidate: Candidate) -> float:
        chosen = dict(candidate.precision)
        fp32 = self.ms[FP32]
        return sum(self.ms.get(chosen.get(layer, FP32), fp32) for layer in self.layers) / max(len(self.layers), 1)


@dataclass(frozen=True)
class Targets:
    """Which kinds the plan works with: the fastest feasible reference, and the kind it repairs (of the infeasible
    references faster than that one and within REPAIR_WITHIN of the fastest of them: the closest to the
    constraint), if any."""

    best: Reference
    repair: Reference | None
    fp32: Reference

    @property
    def kinds(self) -> list[str]:
        """The kinds the sensitivity pass ranks groups for."""
        wanted = [r.kind for r in (self.repair, self.best) if r is not None and r.kind != FP32]
        return list(dict.fromkeys(wanted))


def choose_targets(references: Sequence[Reference]) -> Targets | None:
    fp32 = next((r for r in references if r.kind == FP32), None)
    feasible = [r for r in references if r.feasible]
    if fp32 is None or not feasible:
        return None
    best = min(feasible, key=lambda r: r.latency_ms)
    faster = [r for r in references if not r.feasible and r.latency_ms < best.latency_ms]
    # Only kinds about as fast as the fastest are worth repairing: a repair is never faster than its kind
    # (all-mpnet-base-v2: int4 at 1.3x fp32 missed by 0.024, per-channel int8 at 1.7x by 0.12; one role of
    # layers kept fp32 repairs the second at 1.66x).
    fastest = min((r.latency_ms for r in faster), default=math.inf)
    worth = [r for r in faster if r.latency_ms <= fastest * REPAIR_WITHIN]
    repair = min(worth, key=lambda r: (r.drop, r.latency_ms)) if worth else None
    return Targets(best, repair, fp32)


def groups_by_sensitivity(rows: Sequence[SensitivityRow], kind: str) -> list[tuple[str, ...]]:
    """The layer groups probed at ``kind``, most sensitive first (a probe that failed counts as most sensitive)."""
    return [row.layers for row in ranking([r for r in rows if r.kind == "precision"], kind)]


def fill_points(space: SearchSpace, best: Reference, fp32: Reference, order: Sequence[tuple[str, ...]],
                predict: Callable[[Candidate], float]) -> list[PlanPoint]:
    """Mixes of ``best``'s kind with the k most sensitive groups fp32, their predicted latencies evenly spaced on
    a log scale between ``best`` and fp32, at most FILL_STEP apart (see the module docstring)."""
    if best.kind == FP32:
        return []
    return spaced_points(space, best.kind, FP32, order, 0, best.latency_ms, fp32.latency_ms, predict, "fill")


def prune_point(space: SearchSpace, best: Reference) -> PlanPoint | None:
    """The first step of :class:`PruneLadder` from ``best``, or None for a space that prunes nothing."""
    return PruneLadder(space, best.kind).next() if space.prunes else None


class PruneLadder:
    """The fastest feasible reference with every searched pruning group pruned alike, one ratio step further each
    build while the last step was feasible, recovered with the strongest recovery the space offers (its last), with
    :data:`LADDER_RECOVERY_BUDGET` times the experiment's distillation budget.
    Where pruning pays (the digits CNN), the sampler starts beside pruned models measured feasible at growing
    ratios; where it does not (a pretrained encoder), the first step says so in one trial. Without it, a sampler
    that sees every unpruned mix feasible and every pruned one worse would stop pruning (the space's `pruned`
    switch would let it)."""

    def __init__(self, space: SearchSpace, kind: str):
        self.space, self.kind = space, kind
        self.ratios = {group: sorted(r for r in ratios if r > 0) for group, ratios in space.prune_choices.items()
                       if len(ratios) > 1 and any(r > 0 for r in ratios)}
        self.steps = max((len(r) for r in self.ratios.values()), default=0)
        self.step, self.done = 0, False

    def next(self) -> PlanPoint | None:
        if self.done or self.step >= self.steps:
            return None
        prune = {group: ratios[min(self.step, len(ratios) - 1)] for group, ratios in self.ratios.items()}
        self.step += 1
        space = self.space
        candidate = replace(mix(space, self.kind, [], FP32), prune=tuple(prune.items()), recovery=space.recovery[-1],
                            importance=space.importance[0], recovery_budget=LADDER_RECOVERY_BUDGET)
        ratios = "/".join(f"{r:g}" for r in sorted(set(prune.values())))
        return PlanPoint(candidate, f"prune {self.kind}: every group by {ratios} ({space.recovery[-1]})", self.step)

    def measured(self, point: PlanPoint, feasible: bool) -> None:
        self.done = self.done or not feasible

    def stop(self) -> None:
        self.done = True


class PlanQueue:
    """A loop callback that queues the plan's points: the fill points at once; the repair one count at a time as
    each is measured; once the repair is feasible, its narrowing one point at a time and the mixes that follow it
    at once; then the pruning ladder one step at a time. Nothing is queued once the budget has no room for it; its state lives in the driver (a resumed study
    goes on with the sampler)."""

    def __init__(self, fill: Sequence[PlanPoint], repair: RepairSearch | None, max_drop: float | None,
                 enqueue: Callable[[PlanPoint], None], log: Callable[[str], None] = print,
                 ceiling_ms: float = math.inf, predict: Callable[[Candidate], float] | None = None,
                 ladder: PruneLadder | None = None):
        """``ceiling_ms``: the best feasible reference's latency; a repair point measured at or above it ends the
        repair (a mix's transitions between kinds can cost more than the kinds save: on ResNet-50, uniform int8
        with a quarter of its convolutions fp32 ran at 0.98x fp32). ``predict``: the latency model, for the
        mixes that follow a feasible repair (none without it). ``ladder``: the pruning steps, measured once the
        repair and its follow-ups are done."""
        self.fill, self.repair, self.ceiling_ms, self.predict = list(fill), repair, ceiling_ms, predict
        self.ladder = ladder
        self.max_drop = math.inf if max_drop is None else max_drop
        self.enqueue, self.log = enqueue, log
        # the search whose points are queued now
        self.search: RepairSearch | NarrowSearch | PruneLadder | None = repair if repair is not None else ladder
        self.waiting: dict[str, PlanPoint] = {}  # label -> the point of `search` being measured
        self.repaired_ms: dict[int, float] = {}  # kept count -> measured latency of the feasible repair points

    def start(self, room: int) -> None:
        """Queue the first repair point, then as many fill points as ``room`` leaves."""
        self._next(room)
        self._queue(self.fill, room - len(self.waiting))

    def __call__(self, study: optuna.Study, finished) -> None:
        meta = TrialMeta.of(finished.trial)
        point = self.waiting.pop(meta.plan, None)
        room = finished.budget - finished.done - finished.in_flight
        if point is not None and self.search is not None:
            feasible = is_feasible(finished.trial, self.max_drop)
            self.search.measured(point, feasible)
            drop = "did not complete" if meta.metric_drop is None else f"drop {meta.metric_drop:.4f}"
            self.log(f"plan: {point.label}: {drop}, {'feasible' if feasible else 'infeasible'}")
            values = finished.trial.values
            if values is not None and feasible and self.search is self.repair:
                self.repaired_ms[point.kept] = values[1]
            if values is not None and values[1] >= self.ceiling_ms and self.search is self.repair:
                self.search.stop()
                self.log(f"plan: the repair stops: {values[1]:.3f} ms is no faster than the best feasible reference "
                         f"({self.ceiling_ms:.3f} ms); keeping more groups safe would be slower still")
        self._next(room)

    def _next(self, room: int) -> None:
        while self.search is not None and not self.waiting and room > 0:
            point = self.search.next()
            if point is not None:
                self.enqueue(point)
                self.waiting[point.label] = point
                return
            self._after(self.search, room)

    def _after(self, done: RepairSearch | NarrowSearch | PruneLadder, room: int) -> None:
        """``done`` has nothing more to measure: after a feasible repair faster than the best reference, its
        narrowing and the mixes between it and that reference; then the pruning ladder; then the plan is over."""
        self.search = None
        repaired_ms = self.repaired_ms.get(self.repair.feasible) if done is self.repair and self.repair.found else None
        if repaired_ms is not None and repaired_ms < self.ceiling_ms:
            self.search = self.repair.narrowing()
            if self.predict is not None:
                following = self.repair.following(repaired_ms, self.ceiling_ms, self.predict)
                self._queue(following, room - (self.search is not None))
        if self.search is None and done is not self.ladder:
            self.search = self.ladder

    def _queue(self, points: Sequence[PlanPoint], room: int) -> None:
        for point in points[:max(room, 0)]:
            self.enqueue(point)


def plan_attrs(point: PlanPoint) -> Mapping[str, str | int]:
    budget = point.candidate.recovery_budget
    return {"stage": "plan", "plan": point.label, **({"recovery_budget": budget} if budget != 1 else {})}


def latency_predictor(study: optuna.Study, space: SearchSpace, experiment, feeds_for, log: Callable[[str], None],
                      fit_latency: Callable[[], Any] | None = None) -> Callable[[Candidate], float]:
    """The latency model the plan spaces its points by, fitted (profiling the references) when first used."""
    fitted = []

    def predict(candidate: Candidate) -> float:
        if not fitted:
            try:
                fitted.append(fit_latency() if fit_latency is not None else fit_from_references(
                    study, space, experiment.run_dir, feeds_for, experiment.latency.threads)[0])
            except ValueError as exc:  # no fp32 profile (its timing failed): the references' latencies, per layer
                log(f"plan: no latency model ({str(exc).rstrip('.')}); points spaced by the uniform models' "
                    "latencies instead")
                meta = StudyMeta.load(study)
                fitted.append(ShareModel(space.layers, measured_references(study, meta.max_metric_drop,
                                                                           meta.baseline_latency_ms)))
        return fitted[0].predict(candidate)

    return predict


def start_plan(study: optuna.Study, space: SearchSpace, executor, experiment, room: int, feeds_for, recorder,
               log: Callable[[str], None], stop=None, fit_latency: Callable[[], Any] | None = None
               ) -> PlanQueue | None:
    """After the references: rank the layer groups for the kinds the plan uses (the sensitivity pass, on the
    executor; resumed from the run directory's ``sensitivity.jsonl``), and start queueing the plan's points in
    ``room`` trials. Once per study; returns the callback that queues the rest, or None if there is no plan.
    ``fit_latency``: what fits the latency model the points are spaced by, when first used (default: the per-layer
    model from ORT profiles of the references)."""
    meta = StudyMeta.load(study)
    targets = choose_targets(measured_references(study, meta.max_metric_drop, meta.baseline_latency_ms))
    if targets is None or not targets.kinds or room < 1:
        replace(meta, seeded=True).save(study)
        why = ("no trial is left for it" if room < 1 else "no uniform reference is feasible" if targets is None else
               f"the fastest feasible reference is {targets.best.kind}, and no faster kind misses the constraint "
               "by little enough to repair")
        log(f"plan: none: {why}; the sampler starts alone after the references")
        return None
    config = experiment.seeding
    todo = [p for p in probes(space, "one_in", config.max_groups) if p.kind == "precision" and p.choice in
            targets.kinds]
    groups = len({p.group for p in todo})
    log(f"plan: fastest feasible reference {targets.best.kind} ({targets.best.latency_ms:.3f} ms)"
        + (f"; repairing {targets.repair.kind} (drop {targets.repair.drop:.4f}, {targets.repair.latency_ms:.3f} ms)"
           if targets.repair else "")
        + f"; ranking {groups} layer groups at {', '.join(targets.kinds)}: {len(todo)} probes, each scored on "
          f"{config.samples or 'all'} evaluation samples, not timed ...")
    started = time.perf_counter()
    rows = run_sensitivity(executor, todo, meta.baseline_metric, meta.maximize, config.samples,
                           experiment.run_dir / "sensitivity.jsonl", log, None, stop,
                           target_stderr(meta.max_metric_drop, groups))
    spent = time.perf_counter() - started
    publish_sensitivity(rows, experiment.run_dir, meta.metric_name, recorder, spent)
    predict = latency_predictor(study, space, experiment, feeds_for, log, fit_latency)
    fill = fill_points(space, targets.best, targets.fp32, groups_by_sensitivity(rows, targets.best.kind), predict)
    ladder = PruneLadder(space, targets.best.kind) if space.prunes else None
    repair = None
    if targets.repair is not None:
        repair = RepairSearch(space, targets.repair.kind, targets.best.kind,
                              groups_by_sensitivity(rows, targets.repair.kind))

    def enqueue(point: PlanPoint) -> None:
        study.enqueue_trial(space.params_of(point.candidate), user_attrs=dict(plan_attrs(point)))
        log(f"plan: queued {point.label}")

    queue = PlanQueue(fill, repair, meta.max_metric_drop, enqueue, log, targets.best.latency_ms, predict, ladder)
    log(f"plan: {len(rows)} probes in {spent:.1f} s; {len(fill)} fill points"
        + (f"; pruning ladder of up to {ladder.steps} steps" if ladder is not None else "")
        + (f"; repair of {targets.repair.kind} searched over {len(repair.order)} ranked groups, one build at a time"
           if repair else ""))
    queue.start(room)
    replace(StudyMeta.load(study), seeded=True).save(study)  # once queued: a pass stopped midway resumes instead
    return queue
