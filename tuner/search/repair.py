"""The plan's searches over built, measured mixes (see :mod:`tuner.search.plan`): how many of the most sensitive
layer groups a fast kind must keep at a safer kind to be feasible (:class:`RepairSearch`), which layers of the last
such group it really needs (:class:`NarrowSearch`), and mixes spaced in predicted latency (:func:`spaced_points`).
Each search proposes one point at a time and is told whether it was feasible."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuner.core.candidate import Candidate
from tuner.core.precision import FP32
from tuner.space import SearchSpace

FILL_STEP = 1.35  # largest latency ratio wanted between neighbouring fill points
MAX_FILL = 4
MAX_REPAIR_BUILDS = 6
MAX_NARROW_BUILDS = 4


@dataclass(frozen=True)
class PlanPoint:
    candidate: Candidate
    label: str  # what the point is, e.g. "repair int8: 4 most sensitive groups at int8-dynamic-pc"
    kept: int  # how many of the ranked groups it keeps at the safer kind
    span: tuple[int, int] = (0, 0)  # a narrowing point: which of the last kept group's layers it keeps safe


def mix(space: SearchSpace, base: str, keep: Sequence[tuple[str, ...]], safe: str) -> Candidate:
    """Every searched layer at ``base`` where its rule allows it (else fp32), the layers of ``keep`` at ``safe``
    (else fp32); unpruned, at the highest opt level (on torch, compiled as the references are)."""
    def allowed(layer: str, choice: str) -> str:
        choices = space.precision_choices[layer]
        return choice if choice in choices else (FP32 if FP32 in choices else choices[0])

    kept = {layer for group in keep for layer in group}
    precision = {layer: allowed(layer, safe if layer in kept else base) for layer in space.precision_choices}
    return Candidate(tuple(precision.items()), opt_level=space.opt_levels[-1], recovery=space.recovery[0],
                     importance=space.importance[0], **space.runtime_choices())


def spaced_points(space: SearchSpace, base: str, safe: str, order: Sequence[tuple[str, ...]], first: int,
                  low_ms: float, high_ms: float, predict: Callable[[Candidate], float], what: str
                  ) -> list[PlanPoint]:
    """Mixes of ``base`` with the k most sensitive groups at ``safe``, first < k < len(order), between a mix
    measured at ``low_ms`` (k = first) and one at ``high_ms`` (all kept): as many as keep neighbours at most
    FILL_STEP apart (MAX_FILL at most), their predicted latencies evenly spaced on a log scale."""
    if not order or high_ms <= low_ms:
        return []
    count = min(MAX_FILL, max(0, math.ceil(math.log(high_ms / low_ms) / math.log(FILL_STEP)) - 1),
                len(order) - first - 1)
    if count < 1:
        return []
    counts = range(first + 1, len(order))
    predicted = {k: predict(mix(space, base, order[:k], safe)) for k in [first, *counts, len(order)]}
    low, high = predicted[first], predicted[len(order)]
    if not high > low:  # the model sees no cost in safer layers: spread the counts instead
        ks = [first + round((len(order) - first) * (i + 1) / (count + 1)) for i in range(count)]
    else:
        targets = [low * (high / low) ** ((i + 1) / (count + 1)) for i in range(count)]
        ks = [min(counts, key=lambda k: abs(math.log(predicted[k] / target))) for target in targets]
    return [PlanPoint(mix(space, base, order[:k], safe), f"{what} {base}: {k} most sensitive of {len(order)} "
                      f"groups {'fp32' if safe == FP32 else 'at ' + safe}", k) for k in sorted(set(ks))]


class RepairSearch:
    """Which count of the most sensitive groups, kept at the safer kind, makes the repaired kind feasible: 1, 2,
    4, ... until one is, then halving the interval (each step one built and measured trial)."""

    def __init__(self, space: SearchSpace, repair: str, safe: str, order: Sequence[tuple[str, ...]],
                 builds: int = MAX_REPAIR_BUILDS):
        self.space, self.repair, self.safe, self.order = space, repair, safe, list(order)
        self.infeasible, self.feasible = 0, len(self.order)  # uniform `repair` misses; uniform `safe` is feasible
        self.found = False
        self.builds = builds

    def next(self) -> PlanPoint | None:
        """The next count to measure, or None when the search is done."""
        if self.builds <= 0 or self.feasible - self.infeasible <= 1:
            return None
        k = (self.infeasible + self.feasible) // 2 if self.found else max(1, 2 * self.infeasible)
        if k >= self.feasible:
            return None
        self.builds -= 1
        return PlanPoint(mix(self.space, self.repair, self.order[:k], self.safe),
                         f"repair {self.repair}: {k} most sensitive of {len(self.order)} groups at {self.safe}", k)

    def stop(self) -> None:
        """No count is worth measuring any more (a mix measured slower than the best feasible reference: keeping
        more groups safe would only be slower)."""
        self.builds = 0

    def measured(self, point: PlanPoint, feasible: bool) -> None:
        if feasible:
            self.feasible, self.found = min(self.feasible, point.kept), True
        else:
            self.infeasible = max(self.infeasible, point.kept)

    def narrowing(self) -> NarrowSearch | None:
        """Once feasible: the search over the layers of the last group it keeps safe (None if that group is one
        layer)."""
        if not self.found or self.feasible >= len(self.order) or len(self.order[self.feasible - 1]) < 2:
            return None
        return NarrowSearch(self.space, self.repair, self.safe, self.order[:self.feasible])

    def following(self, low_ms: float, high_ms: float, predict: Callable[[Candidate], float]) -> list[PlanPoint]:
        """Once feasible at ``low_ms``: mixes keeping more groups safe, up to the best feasible reference's
        ``high_ms`` (the front between them is empty otherwise)."""
        if not self.found:
            return []
        return spaced_points(self.space, self.repair, self.safe, self.order, self.feasible, low_ms, high_ms,
                             predict, "repair")


class NarrowSearch:
    """Which layers of the last group a feasible repair keeps safe are needed: keep the first half of them, else
    the second half; whichever is feasible is halved again (each step one built and measured trial)."""

    def __init__(self, space: SearchSpace, repair: str, safe: str, kept: Sequence[tuple[str, ...]],
                 builds: int = MAX_NARROW_BUILDS):
        self.space, self.repair, self.safe = space, repair, safe
        self.whole, self.last = list(kept[:-1]), kept[-1]
        self.span = (0, len(self.last))  # the layers of `last` known to be enough
        self.pending = self._halves()
        self.builds = builds

    def _halves(self) -> list[tuple[int, int]]:
        start, end = self.span
        middle = (start + end) // 2
        return [(start, middle), (middle, end)] if end - start > 1 else []

    def next(self) -> PlanPoint | None:
        if self.builds <= 0 or not self.pending:
            return None
        self.builds -= 1
        start, end = self.pending[0]
        keep = [*self.whole, self.last[start:end]]
        return PlanPoint(mix(self.space, self.repair, keep, self.safe),
                         f"narrow {self.repair}: layers {start + 1}-{end} of {len(self.last)} in group "
                         f"{len(self.whole) + 1} kept {'fp32' if self.safe == FP32 else 'at ' + self.safe}",
                         len(self.whole) + 1, (start, end))

    def stop(self) -> None:
        self.builds = 0

    def measured(self, point: PlanPoint, feasible: bool) -> None:
        if point.span not in self.pending:
            return
        if feasible:
            self.span = point.span
            self.pending = self._halves()
        else:
            self.pending.remove(point.span)
