"""The default sampler after the plan (tuner.search.front_mutation), on a real Optuna study with given objective
values and constraints: a trial drawn from the feasible front differs from its parent in 1 to 3 choices and is
never a candidate already tried; while fp32 alone is feasible, every trial is the base sampler's."""

import optuna
import pytest

from tuner.search.front_mutation import FrontMutation, feasible_front
from tuner.search.samplers import METRIC_CONSTRAINT, make_sampler

DISTS = {f"layer{i}": optuna.distributions.CategoricalDistribution(["fp32", "int8", "int4"]) for i in range(12)}


class Marker(optuna.samplers.BaseSampler):
    """A base sampler whose draws are recognisable: every precision 'int4' (a switch: off)."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return "int4" if "int4" in param_distribution.choices else False


def told(study, params, metric, latency, drop):
    study.enqueue_trial(params)
    trial = study.ask(fixed_distributions=DISTS)
    trial.set_constraint(METRIC_CONSTRAINT, drop)
    study.tell(trial, [metric, latency])


def fp32_and(study, *mixes):
    told(study, {name: "fp32" for name in DISTS}, 1.0, 10.0, -0.01)
    for params, metric, latency, drop in mixes:
        told(study, params, metric, latency, drop)


def test_a_trial_from_the_front_changes_one_to_three_choices_of_a_feasible_non_fp32_parent():
    sampler = FrontMutation(Marker(), seed=0, explore=0.0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    repaired = {name: "fp32" if i < 2 else "int8" for i, name in enumerate(DISTS)}
    fp32_and(study, (repaired, 0.995, 4.0, -0.005), ({name: "int8" for name in DISTS}, 0.9, 3.0, 0.08))
    assert [t.values[1] for t in feasible_front(study.trials)] == [4.0, 10.0]  # fastest first; uniform int8 misses
    seen = {tuple(sorted(t.params.items())) for t in study.trials}
    for _ in range(30):
        trial = study.ask(fixed_distributions=DISTS)
        changed = [name for name in DISTS if trial.params[name] != repaired[name]]
        assert 1 <= len(changed) <= 3  # the parent is the repaired mix, never fp32 (the slowest)
        key = tuple(sorted(trial.params.items()))
        assert key not in seen
        seen.add(key)
        trial.set_constraint(METRIC_CONSTRAINT, 1.0)  # infeasible: the front stays, its neighbours run out
        study.tell(trial, [0.5, 5.0])


@pytest.mark.parametrize("explore", [0.0, 1.0])
def test_the_base_sampler_draws_while_fp32_alone_is_feasible_and_its_share_after(explore):
    sampler = FrontMutation(Marker(), seed=0, explore=explore)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    fp32_and(study, ({name: "int8" for name in DISTS}, 0.9, 3.0, 0.08))
    assert set(study.ask(fixed_distributions=DISTS).params.values()) == {"int4"}
    told(study, {name: "int8" if i else "fp32" for i, name in enumerate(DISTS)}, 0.99, 4.0, -0.001)
    drawn = set(study.ask(fixed_distributions=DISTS).params.values())
    assert (drawn == {"int4"}) == (explore == 1.0)


def test_the_base_sampler_gets_a_larger_share_once_a_pruned_trial_is_on_the_feasible_front():
    dists = {**DISTS, "pruned": optuna.distributions.CategoricalDistribution([False, True])}
    sampler = FrontMutation(Marker(), seed=0, explore=0.0, explore_pruning=1.0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for pruned, metric, latency in ((False, 1.0, 10.0), (False, 0.995, 4.0)):
        study.enqueue_trial({**{name: "int8" for name in DISTS}, "pruned": pruned})
        trial = study.ask(fixed_distributions=dists)
        trial.set_constraint(METRIC_CONSTRAINT, -0.001)
        study.tell(trial, [metric, latency])
    parents = feasible_front(study.trials)[:-1]
    assert sampler.explore_share(parents) == 0.0
    stepped = study.ask(fixed_distributions=dists).params
    assert sum(stepped[name] != "int8" for name in DISTS) <= 3  # a step from the front, not the base's draw
    study.enqueue_trial({**{name: "int8" for name in DISTS}, "pruned": True})
    trial = study.ask(fixed_distributions=dists)
    trial.set_constraint(METRIC_CONSTRAINT, -0.001)
    study.tell(trial, [0.99, 2.0])  # pruned, feasible, fastest: on the front
    assert sampler.explore_share(feasible_front(study.trials)[:-1]) == 1.0
    assert set(study.ask(fixed_distributions=dists).params.values()) == {"int4", False}


def test_auto_is_tpe_drawing_near_the_front():
    sampler = make_sampler("auto", seed=0)
    assert isinstance(sampler, FrontMutation) and isinstance(sampler.base, optuna.samplers.TPESampler)


def test_a_pruning_ratio_moves_on_its_grid_and_a_change_with_no_effect_is_not_a_new_candidate():
    ratio = optuna.distributions.FloatDistribution(0.0, 0.5, step=0.25)
    dists = {"layer0": DISTS["layer0"], "ratio": ratio}

    def canonical(params):  # the ratio counts only where layer0 is quantized (as a switch would)
        return (params["layer0"], params["ratio"] if params["layer0"] != "fp32" else None)

    sampler = FrontMutation(Marker(), seed=0, explore=0.0, max_changes=1, canonical=canonical)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for params, values in (({"layer0": "fp32", "ratio": 0.0}, [1.0, 10.0]), ({"layer0": "int8", "ratio": 0.25},
                                                                             [0.99, 4.0])):
        study.enqueue_trial(params)
        trial = study.ask(fixed_distributions=dists)
        trial.set_constraint(METRIC_CONSTRAINT, -0.01)
        study.tell(trial, values)
    drawn = set()
    for _ in range(3):
        trial = study.ask(fixed_distributions=dists)
        drawn.add((trial.params["layer0"], trial.params["ratio"]))
        trial.set_constraint(METRIC_CONSTRAINT, 1.0)
        study.tell(trial, [0.5, 5.0])
    # one change each from (int8, 0.25): the ratio to 0.0 or 0.5, the kind to int4; not fp32 (with any ratio,
    # the fp32 trial again)
    assert drawn == {("int8", 0.0), ("int8", 0.5), ("int4", 0.25)}


def test_a_metric_minimized_keeps_its_front_and_its_parents():
    # perplexity: lower is better; the mix at 10.1 is feasible (+0.1), uniform int8 at 15 is not
    sampler = FrontMutation(Marker(), seed=0, explore=0.0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    mix = {name: "fp32" if i < 2 else "int8" for i, name in enumerate(DISTS)}
    fp32_and(study, (mix, 10.1, 4.0, -0.4), ({name: "int8" for name in DISTS}, 15.0, 3.0, 4.5))
    assert [t.values for t in feasible_front(study.trials, maximize=False)] == [[10.1, 4.0], [1.0, 10.0]]
    assert [t.values[1] for t in feasible_front(study.trials, maximize=True)] == [4.0]  # read the other way round
    trial = study.ask(fixed_distributions=DISTS)
    assert 1 <= sum(trial.params[name] != mix[name] for name in DISTS) <= 3
