"""The default sampler after the plan: most trials are a feasible front trial with a few of its choices changed,
the others are TPE's.

Per-layer spaces are wide (72 layers of a 110M encoder, five kinds each) and the feasible region narrow (a role of
layers kept fp32 in every block, say). TPE, even multivariate, keeps each choice of a good trial with a probability
near 0.6 when it samples around it, so a new candidate differs from every good one in dozens of layers, and on
such a model nearly every sampled trial misses the constraint (all-mpnet-base-v2: 13 of 13). A front trial with
one to three choices changed (a layer's kind, a group's pruning ratio by a step of its range, the pruning switch)
stays near what is known to be feasible, and moves along the front: a layer to a faster kind where the margin
allows it, a group pruned further, or back to a safer choice. A share of trials (``explore``) stays TPE's, which
also draws every trial until a feasible one other than fp32 exists. Once a pruned trial is on the feasible front,
TPE draws every trial (``explore_pruning``): pruning pays on this model, and TPE, which models each group's ratio
from every trial, finds faster pruned points than one-to-three-choice steps from the front do (digits CNN, 60
trials, three seeds: within an accuracy drop of 0.005, 1.64-2.22x over uniform int8 against 1.36-1.82x with TPE
drawing half the trials; `experiments/search/plan/README.md`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.space.search_space import PRUNED

EXPLORE = 0.25  # the share of trials drawn by the base sampler once there are parents
EXPLORE_PRUNING = 1.0  # ... once a pruned trial is among them
MAX_CHANGES = 3


def feasible_front(trials: Sequence[FrozenTrial], maximize: bool = True) -> list[FrozenTrial]:
    """The completed trials within every constraint that no other such trial dominates (objectives: the metric,
    maximized or minimized (perplexity); latency, minimized), fastest first: one sweep from the most accurate down,
    keeping each trial faster than every one above it."""
    feasible = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
                and all(v <= 0 for v in t.constraints.values())]
    front, fastest = [], float("inf")
    sign = -1 if maximize else 1
    for trial in sorted(feasible, key=lambda t: (sign * t.values[0], t.values[1])):
        if trial.values[1] < fastest:
            front.append(trial)
            fastest = trial.values[1]
    return front[::-1]


class FrontMutation(BaseSampler):
    """``base`` draws a share ``explore`` of the trials (and all of them while no feasible trial but fp32 is
    known); every other trial copies a random feasible front trial (the slowest, fp32, aside) with 1 to
    ``max_changes`` of its categorical choices changed to another value, never a candidate already tried."""

    def __init__(self, base: BaseSampler, seed: int | None = None, explore: float = EXPLORE,
                 max_changes: int = MAX_CHANGES, canonical: Callable[[dict[str, Any]], Hashable] | None = None,
                 explore_pruning: float = EXPLORE_PRUNING):
        """``canonical``: the candidate that parameters stand for (the search space's decode), so that a change
        with no effect (a pruning ratio of a group left unpruned) is not taken for a new candidate."""
        self.base, self.explore, self.max_changes = base, explore, max_changes
        self.explore_pruning = explore_pruning
        self.canonical = canonical or _key
        self._rng = np.random.RandomState(seed)
        self._parents: dict[int, FrozenTrial] = {}  # trial number -> the front trial it is drawn from
        self._seen: dict[int, Hashable] = {}  # finished trial number -> its candidate (decoded once)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.seed()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)
        if "fixed_params" in trial.system_attrs:  # a queued trial (reference, plan point): its params are given
            return
        front = feasible_front(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                               study.directions[0] == StudyDirection.MAXIMIZE)
        # not from the slowest (fp32, as a rule): its neighbours are about as slow and as accurate
        parents = front[:-1]
        if not parents or self._rng.rand() < self.explore_share(parents):
            return  # fp32 alone (or nothing) is known feasible: nothing to move along yet
        self._parents[trial.number] = parents[self._rng.randint(len(parents))]

    def explore_share(self, parents: Sequence[FrozenTrial]) -> float:
        """The base sampler's share of the trials, given the feasible front's members other than the slowest."""
        return self.explore_pruning if any(t.params.get(PRUNED) is True for t in parents) else self.explore

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        parent = self._parents.get(trial.number)
        if parent is None:
            return self.base.infer_relative_search_space(study, trial)
        return dict(parent.distributions)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        parent = self._parents.get(trial.number)
        if parent is None:
            return self.base.sample_relative(study, trial, search_space)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if t.number not in self._seen:
                self._seen[t.number] = self.canonical(t.params)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        tried = set(self._seen.values()) | {self.canonical(t.params) for t in running if t.params}
        changeable = sorted(name for name, d in search_space.items() if name in parent.params
                            and len(_values(d)) > 1)
        params = dict(parent.params)
        for _ in range(50):  # a few draws until one is a new candidate
            params = dict(parent.params)
            count = min(len(changeable), 1 + self._rng.randint(self.max_changes))
            for name in self._rng.choice(changeable, size=count, replace=False) if changeable else []:
                others = [v for v in _values(search_space[name]) if v != params[name]]
                params[name] = others[self._rng.randint(len(others))]
            if self.canonical(params) not in tried:
                break
        return {name: params[name] for name in search_space if name in params}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        parent = self._parents.get(trial.number)
        if parent is not None and param_name in parent.params and \
                param_distribution._contains(param_distribution.to_internal_repr(parent.params[param_name])):
            return parent.params[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._parents.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)


def _values(distribution: BaseDistribution) -> list:
    """The values a changed choice may take: a category, or a point of a stepped range (pruning ratios)."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    step = getattr(distribution, "step", None)
    if isinstance(distribution, (FloatDistribution, IntDistribution)) and step and not distribution.log:
        count = int(round((distribution.high - distribution.low) / step)) + 1
        return [type(distribution.low)(round(distribution.low + i * step, 10)) for i in range(count)]
    return []


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))
