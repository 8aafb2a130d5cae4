"""Failed and screened-out trials as infeasible observations, for a sampler that reads COMPLETE trials only.

The loop tells a candidate that failed to build, run or score, and one screened out on the subset, PRUNED with a
violated constraint (`search.loop.tell`). TPE learns from those; Optuna's GPSampler reads COMPLETE trials only, so
to it such a candidate was never tried: it extrapolates its model into the region that fails and proposes it
again (tests/test_infeasible.py: 10 failures in 10 trials unwrapped, 1 wrapped). `SeesInfeasible` wraps it and
shows it the study with each of those trials COMPLETE and infeasible: objectives no better than the
worst completed trial's (a screened-out trial keeps its subset estimate of the metric when that is worse) and a
metric-drop violation beyond every one seen. The storage is not changed: only what the sampler reads.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.core.records import StudyMeta, TrialMeta

METRIC_CONSTRAINT = "metric_drop"
_PREFIX = "constraints:"


def _infeasible(trial: FrozenTrial) -> bool:
    """Told PRUNED with a violated constraint: failed or screened out (a stop's interrupted trial is FAIL)."""
    return trial.state == TrialState.PRUNED and any(v > 0 for v in trial.constraints.values())


def as_seen(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection],
            meta: StudyMeta | None = None) -> list[FrozenTrial]:
    """``trials`` with every infeasible PRUNED one turned COMPLETE with imputed objectives and constraint; the
    others are returned as they are. Nothing changes before a first trial completes (nothing to impute from)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not done or not any(_infeasible(t) for t in trials):
        return list(trials)
    worst = [min(t.values[i] for t in done) if d == StudyDirection.MAXIMIZE else max(t.values[i] for t in done)
             for i, d in enumerate(directions)]
    constrained = any(METRIC_CONSTRAINT in t.constraints for t in done)
    observed = [t.constraints[METRIC_CONSTRAINT] for t in trials if METRIC_CONSTRAINT in t.constraints]
    beyond = max(observed) + max(max(observed) - min(observed), 1e-3) if observed else 1.0
    seen = []
    for trial in trials:
        if not _infeasible(trial):
            seen.append(trial)
            continue
        values = list(worst)
        estimate = _screened_metric(trial, meta)
        if estimate is not None:  # the subset's estimate, when it is worse than every completed trial
            values[0] = min(values[0], estimate) if directions[0] == StudyDirection.MAXIMIZE \
                else max(values[0], estimate)
        view = copy.copy(trial)
        view.state = TrialState.COMPLETE
        view.values = values
        # the same constraint keys as a completed trial's: Optuna's GP needs one vector length for all
        attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith(_PREFIX)}
        if constrained:  # a screened-out trial keeps its estimated violation; a failed one is past all
            own = trial.constraints.get(METRIC_CONSTRAINT, 0.0)
            attrs[_PREFIX + METRIC_CONSTRAINT] = own if own > 0 else beyond
        view.system_attrs = attrs
        seen.append(view)
    return seen


def _screened_metric(trial: FrozenTrial, meta: StudyMeta | None) -> float | None:
    drop = TrialMeta.of(trial).metric_drop
    if drop is None or meta is None or meta.baseline_metric is None:
        return None
    return meta.baseline_metric - drop if meta.direction == "maximize" else meta.baseline_metric + drop


class _StudyAsSeen:
    """The study, except that its trials are read through `as_seen`; everything else is the study's own."""

    def __init__(self, study: optuna.Study):
        self._study = study
        self._meta = StudyMeta.load(study)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = as_seen(self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache),
                         self._study.directions, self._meta)
        trials = [t for t in trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class SeesInfeasible(BaseSampler):
    """``base`` (GPSampler) reading failed and screened-out trials as infeasible ones."""

    def __init__(self, base: BaseSampler):
        self.base = base

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(_StudyAsSeen(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(_StudyAsSeen(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(_StudyAsSeen(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(_StudyAsSeen(study), trial)

    def after_trial(self, study, trial, state, values):
        self.base.after_trial(_StudyAsSeen(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


# What `sampler: auto` (the default) runs: TPE, with most trials drawn near the feasible front once one is known
# (tuner.search.front_mutation). In experiments/search (digits CNN, 50 trials, 5 seeds on a 16-core machine and 1
# here) TPE and GP reached the same hypervolume within the seeds' spread, both well above random and NSGA-II;
# TPE's cost per trial stays small in spaces of hundreds of parameters.
AUTO_SAMPLER = "local"


def resolve_sampler(kind: str) -> str:
    return AUTO_SAMPLER if kind == "auto" else kind


def make_sampler(kind: str, seed: int | None, canonical=None) -> optuna.samplers.BaseSampler:
    """Samplers read the metric-drop constraint that the loop sets on each trial (`Trial.set_constraint`). TPE
    reads failed and screened-out trials (PRUNED, constraint violated) as infeasible; GP reads COMPLETE trials
    only and is shown those as infeasible COMPLETE ones (`tuner.search.samplers`). NSGA-II never makes a parent of
    a trial that did not complete, which is how a genetic algorithm discards an infeasible child; shown the
    failures as well it failed no less often (12 seeded runs of tests/test_infeasible.py's problem).
    ``canonical``: what a set of parameters stands for (the space's candidate), for `local`."""
    kind = resolve_sampler(kind)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if kind == "local":  # TPE, most trials near the feasible front once one is known
        from tuner.search.front_mutation import FrontMutation

        return FrontMutation(make_sampler("tpe", seed), seed, canonical=canonical)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":  # Gaussian-process Bayesian optimization; reads the constraint like the others
        return SeesInfeasible(optuna.samplers.GPSampler(seed=seed, n_startup_trials=10))
    raise ValueError(f"sampler must be 'auto', 'local', 'tpe', 'nsga2', 'gp' or 'random', but got {kind!r}.")
