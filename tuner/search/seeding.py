"""The predicted front: candidates chosen from the sensitivity pass and the latency model, queued right after
the references so that the sampler starts from good points instead of random ones.

A candidate's predicted metric drop is the sum of its groups' drops in the sensitivity pass (each alone, one
probe each: additive by assumption, clipped at 0 where a probe came out better than fp32); its predicted
latency is the latency model's. A greedy walk starts from fp32 and, at each step, applies the one change (a
layer group to a precision, or a pruning group to a ratio) that saves the most predicted milliseconds per
unit of predicted drop, until no change saves time. Seeds are picked along that path: spread over predicted
latency among the points predicted feasible, plus the first point past the constraint (the boundary is where
predictions are least sure).

Drops are not always additive (pruning several groups of a small CNN together cost far more than the sum of
each alone), so the path is checked as it is measured (:class:`PathCheck`): seeds go to the study one at a time
in path order, and a seed predicted feasible that measures infeasible cuts the path there. The seeds beyond it
are dropped, and the step halfway between it and the furthest seed measured feasible is tried instead, halving
the gap until the two are adjacent or the seed count is spent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tuner.core.candidate import Candidate
from tuner.core.precision import FP32
from tuner.core.records import StudyMeta, TrialMeta
from tuner.search.latency_check import fit_from_references
from tuner.search.latency_model import LatencyModel
from tuner.search.loop import is_feasible
from tuner.search.sensitivity import (
    PRUNE,
    SensitivityRow,
    heatmap_html,
    layer_groups,
    markdown_table,
    probes,
    run_sensitivity,
    target_stderr,
)
from tuner.space import SearchSpace


@dataclass(frozen=True)
class Seed:
    candidate: Candidate
    predicted_drop: float
    predicted_ms: float
    step: int  # position on the greedy path (0: fp32)


def _drops(rows: Sequence[SensitivityRow]) -> dict[tuple[str, str, str], float]:
    """(kind, group, choice) -> drop, clipped at 0; a failed probe is a drop too large to ever take."""
    return {(r.kind, r.group, r.choice): (float("inf") if r.drop is None else max(r.drop, 0.0)) for r in rows}


def greedy_path(space: SearchSpace, model: LatencyModel, rows: Sequence[SensitivityRow], max_groups: int = 64,
                epsilon: float = 1e-4) -> list[Seed]:
    """The walk of the module docstring: one Seed per step, fp32 first."""
    drops = _drops(rows)
    groups = layer_groups(space, max_groups)
    level = space.opt_levels[-1]
    precision = {layer: FP32 for layer in space.layers if FP32 in space.precision_choices.get(layer, ())}
    prune = {group: ratios[0] for group, ratios in space.prune_choices.items()}
    chosen = {("precision", g): FP32 for g in groups} | {(PRUNE, g): f"{prune[g]:g}" for g in prune}

    def build() -> Candidate:
        return Candidate(tuple(precision.items()), tuple(prune.items()), level, recovery=space.recovery[0],
                         importance=space.importance[0], **space.runtime_choices())

    def drop_of(kind: str, group: str, choice: str) -> float:
        if (kind == "precision" and choice == FP32) or (kind == PRUNE and float(choice) == 0):
            return 0.0
        return drops.get((kind, group, choice), float("inf"))  # never probed: unknown, never taken

    current = build()
    total_drop, latency = 0.0, model.predict(current)
    path = [Seed(current, 0.0, latency, 0)]
    while True:
        best = None
        for (kind, group), now in chosen.items():
            options = ([c for c in space.precision_choices[groups[group][0]]
                        if all(c in space.precision_choices[m] for m in groups[group])] if kind == "precision"
                       else [f"{r:g}" for r in space.prune_choices[group]])
            for choice in options:
                extra = drop_of(kind, group, choice) - drop_of(kind, group, now)
                if choice == now or extra == float("inf"):
                    continue
                saved_precision, saved_prune = dict(precision), dict(prune)
                if kind == "precision":
                    precision.update({m: choice for m in groups[group]})
                else:
                    prune[group] = float(choice)
                saving = latency - model.predict(build())
                precision.clear(), precision.update(saved_precision)
                prune.clear(), prune.update(saved_prune)
                if saving <= 0:
                    continue
                score = saving / (max(extra, 0.0) + epsilon)
                if best is None or score > best[0]:
                    best = (score, kind, group, choice, extra, saving)
        if best is None:
            return path
        _, kind, group, choice, extra, saving = best
        if kind == "precision":
            precision.update({m: choice for m in groups[group]})
        else:
            prune[group] = float(choice)
        chosen[(kind, group)] = choice
        total_drop += extra
        latency -= saving
        path.append(Seed(build(), total_drop, latency, len(path)))


def pick_seeds(path: Sequence[Seed], max_drop: float | None, count: int) -> list[Seed]:
    """Up to ``count`` seeds from the path (fp32 excluded: it is a reference): spread evenly over predicted
    latency among the predicted-feasible points, plus the first point predicted past the constraint."""
    steps = [s for s in path if s.step > 0]
    if not steps or count < 1:
        return []
    limit = float("inf") if max_drop is None else max_drop
    feasible = [s for s in steps if s.predicted_drop <= limit]
    beyond = [s for s in steps if s.predicted_drop > limit][:1 if count > 1 else 0]
    room = max(count - len(beyond), 1)
    if len(feasible) <= room:
        picked = feasible
    else:  # evenly spaced along the feasible part, always ending at its fastest point
        picked = [feasible[round(i * (len(feasible) - 1) / (room - 1))] for i in range(room)] if room > 1 \
            else [feasible[-1]]
    unique = list({s.candidate: s for s in picked + beyond}.values())
    return unique[:count]


class PathCheck:
    """A loop callback that queues seeds one at a time along the path and cuts the path where a measured seed
    parts from its prediction (see the module docstring). ``enqueue`` queues one seed in the study; at most
    ``len(seeds)`` are queued in all, and none once the budget has no room for it (it would be left waiting in
    the study). Its state lives in the driver: a resumed study does not queue the seeds that were not queued
    before it stopped."""

    def __init__(self, path: Sequence[Seed], seeds: Sequence[Seed], max_drop: float | None,
                 enqueue: Callable[[Seed], None], log: Callable[[str], None] = print):
        self.path = list(path)
        self.todo = sorted(seeds, key=lambda s: s.step)
        self.left = len(self.todo)
        self.max_drop = float("inf") if max_drop is None else max_drop
        self.enqueue = enqueue
        self.log = log
        self.queued: list[int] = []  # steps, in the order they were queued
        self.waiting = 0
        self.feasible_step = 0  # the furthest step measured feasible (fp32, step 0, is the reference)
        self.infeasible_step: int | None = None  # the nearest predicted feasible step measured infeasible

    def start(self) -> None:
        self._next()

    def __call__(self, study, finished) -> None:
        step = TrialMeta.of(finished.trial).seed_step
        if step is None or step not in self.queued:
            return
        self.waiting -= 1
        drop = TrialMeta.of(finished.trial).metric_drop
        if is_feasible(finished.trial, self.max_drop):
            self.feasible_step = max(self.feasible_step, step)
        elif self.path[step].predicted_drop <= self.max_drop and (self.infeasible_step is None
                                                                  or step < self.infeasible_step):
            self.infeasible_step = step
            dropped = [s.step for s in self.todo if s.step >= step]
            self.todo = [s for s in self.todo if s.step < step]
            measured = "did not complete" if drop is None else f"measured drop {drop:.4f}"
            self.log(f"seeds: step {step} was predicted at drop {self.path[step].predicted_drop:.4f} and "
                     f"{measured}: the path is cut there" + (f" (steps {dropped} not queued)" if dropped else ""))
        if self.infeasible_step is not None and not any(self.feasible_step < s.step < self.infeasible_step
                                                        for s in self.todo):
            middle = (self.feasible_step + self.infeasible_step) // 2
            if self.feasible_step < middle and middle not in self.queued:
                self.todo.insert(0, self.path[middle])
        if finished.done + finished.in_flight < finished.budget:
            self._next()

    def _next(self) -> None:
        if self.waiting or not self.todo or self.left <= 0:
            return
        seed = self.todo.pop(0)
        self.enqueue(seed)
        self.queued.append(seed.step)
        self.waiting += 1
        self.left -= 1


def seed_params(space: SearchSpace, seeds: Sequence[Seed]) -> list[Mapping]:
    return [space.params_of(s.candidate) for s in seeds]


def publish_sensitivity(rows: list[SensitivityRow], run_dir: Path, metric_name: str, recorder, spent: float
                        ) -> float:
    """The pass's table and chart to the run directory and MLflow; returns the probes' worker seconds."""
    (run_dir / "sensitivity.md").write_text(markdown_table(rows, metric_name) + "\n")
    heatmap_html(rows, run_dir / "sensitivity.html", metric_name)
    for name in ("sensitivity.md", "sensitivity.html", "sensitivity.jsonl"):
        recorder.client.log_artifact(recorder.parent_run_id, str(run_dir / name), artifact_path="sensitivity")
    probe_s = sum(r.seconds for r in rows)
    recorder.log_study_metrics({"sensitivity_probes": len(rows), "sensitivity_wall_s": spent,
                                "sensitivity_probe_s": probe_s})
    return probe_s


def seed_study(study, space: SearchSpace, executor, experiment, n_seeds: int, feeds_for, recorder, log, stop=None
               ) -> PathCheck | None:
    """After the references: fit the latency model on them, run (or resume) the sensitivity pass on the
    executor, and start queueing the seeds; the pass's table and chart go to the run directory and MLflow.
    Once per study. Returns the PathCheck that queues the rest, a callback for the study loop."""
    meta = StudyMeta.load(study)
    config = experiment.seeding
    run_dir = experiment.run_dir
    try:
        model, n_refs = fit_from_references(study, space, run_dir, feeds_for, experiment.latency.threads)
    except ValueError as exc:  # the fp32 reference's timing failed: seeds are predicted from nothing
        log(f"sensitivity: no seeds: no latency model ({exc}); the sampler starts alone after the references")
        replace(StudyMeta.load(study), seeded=True).save(study)
        return None
    todo = probes(space, config.mode, config.max_groups)
    reference_metric = None
    if config.mode == "one_out":  # drops are measured from each uniform reference
        reference_metric = {TrialMeta.of(t).reference_kind: t.values[0]
                            for t in study.get_trials(deepcopy=False) if TrialMeta.of(t).reference
                            and t.values is not None}
    started = time.perf_counter()
    target = target_stderr(meta.max_metric_drop, len({(p.kind, p.group) for p in todo}))
    log(f"sensitivity: {len(todo)} probes ({config.mode}; each scored on {config.samples or 'all'} evaluation "
        "samples, not timed" + (f"; again on all of them where the std. error is above {target:.2g}" if target and
                                config.samples else "") + ") ...")
    rows = run_sensitivity(executor, todo, meta.baseline_metric, meta.maximize, config.samples,
                           run_dir / "sensitivity.jsonl", log, reference_metric, stop, target)
    spent = time.perf_counter() - started
    probe_s = publish_sensitivity(rows, run_dir, meta.metric_name, recorder, spent)
    path = greedy_path(space, model, rows, config.max_groups)
    seeds = pick_seeds(path, meta.max_metric_drop, n_seeds)

    def enqueue(seed: Seed) -> None:
        study.enqueue_trial(space.params_of(seed.candidate), user_attrs={
            "stage": "seed", "seed": f"step {seed.step}: predicted drop {seed.predicted_drop:.4f}, {seed.predicted_ms:.3f} ms",
            "seed_step": seed.step, "seed_predicted_drop": seed.predicted_drop,
            "seed_predicted_ms": seed.predicted_ms})

    check = PathCheck(path, seeds, meta.max_metric_drop, enqueue, log)
    check.start()
    replace(StudyMeta.load(study), seeded=True).save(study)
    log(f"sensitivity: {len(rows)} probes in {spent:.1f} s ({probe_s:.1f} s of worker time); latency model from "
        f"{n_refs} references; {len(seeds)} seeds from a predicted path of {len(path) - 1} steps "
        f"(predicted {seeds[0].predicted_ms:.3f}-{seeds[-1].predicted_ms:.3f} ms), queued one at a time along "
        "the path" if seeds else
        f"sensitivity: {len(rows)} probes in {spent:.1f} s; no change is predicted to save time: no seeds")
    return check if seeds else None
