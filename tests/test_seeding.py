"""The predicted front: the greedy path over sensitivity drops and latency-model costs, and which seeds it gives."""

from dataclasses import replace
from pathlib import Path

import pytest

from tuner.core.candidate import Candidate
from tuner.search.latency_model import LatencyModel, LayerCosts, PruneShape
from tuner.search.seeding import Seed, greedy_path, pick_seeds
from tuner.search.sensitivity import SensitivityRow
from tuner.space import SearchSpace, load_space_file

SPACE = """
layers:
  - match: "re:.*"
    precision: [fp32, int8]
    prune: {low: 0.0, high: 0.5, step: 0.5}
"""


class Group:  # what SearchSpace reads of a pruning group
    def __init__(self, name, channels=16):
        self.name, self.members, self.channels, self.head_dim = name, (name,), channels, 0
        self.consumers = ()

    def remaining(self, ratio, round_to):
        return int(self.channels * (1 - ratio))


@pytest.fixture
def space(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    return SearchSpace(load_space_file(Path(tmp_path / "space.yaml")), {"a": "Gemm", "b": "Gemm"},
                       [Group("a")], round_to=1)


def row(kind, group, choice, drop):
    return SensitivityRow(kind, group, choice, (group,), 0.9 - drop, drop, 0.001, 1.0)


def model():
    fp32 = LayerCosts({"a": 4.0, "b": 2.0}, 1.0, 7.0)
    int8 = LayerCosts({"a": 1.0, "b": 1.0}, 1.0, 3.0)
    shape = {"a": PruneShape(("a",), (), {0.5: 0.5})}
    return LatencyModel.fit([(Candidate(), fp32), (Candidate((("a", "int8"), ("b", "int8"))), int8)], shape)


def test_the_path_takes_the_cheapest_saving_first_and_never_a_failed_probe(space):
    rows = [row("precision", "a", "int8", 0.05), row("precision", "b", "int8", 0.001),
            row("prune", "a", "0.5", 0.3)]
    path = greedy_path(space, model(), rows)
    precision = [dict(s.candidate.precision) for s in path]
    # fp32; then b to int8 (1 ms for 0.001); then a to int8 (3 ms for 0.05); then pruning a (0.5 ms for 0.3)
    assert [s.step for s in path] == [0, 1, 2, 3]
    assert precision[:3] == [{"a": "fp32", "b": "fp32"}, {"a": "fp32", "b": "int8"}, {"a": "int8", "b": "int8"}]
    assert [s.candidate.prune for s in path] == [(("a", 0.0),)] * 3 + [(("a", 0.5),)]
    assert [s.predicted_drop for s in path] == pytest.approx([0.0, 0.001, 0.051, 0.351])
    assert all(later.predicted_ms < earlier.predicted_ms for earlier, later in zip(path, path[1:]))

    broken = [row("precision", "a", "int8", 0.05), SensitivityRow("precision", "b", "int8", ("b",), None, None,
                                                                  None, 1.0, "quantize failed")]
    assert all(dict(s.candidate.precision)["b"] == "fp32" for s in greedy_path(space, model(), broken))


def seed(step, drop, ms):
    return Seed(Candidate(prune=(("g", step / 100),)), drop, ms, step)


def test_seeds_spread_over_the_feasible_path_plus_one_past_the_constraint():
    path = [seed(i, 0.002 * i, 10.0 - i) for i in range(11)]  # drops 0 .. 0.02, feasible up to step 5
    picked = pick_seeds(path, 0.01, 4)
    assert [s.step for s in picked] == [1, 3, 5, 6]  # 1..5 spread over three, then the first past 0.01
    assert [s.step for s in pick_seeds(path, 0.01, 1)] == [5]  # one seed: the fastest predicted feasible
    assert [s.step for s in pick_seeds(path[:10], None, 3)] == [1, 5, 9]  # no constraint: all feasible
    assert pick_seeds(path[:1], 0.01, 4) == [] and pick_seeds(path, 0.01, 0) == []


def measured(step, drop, state="COMPLETE", done=1, budget=100):
    """What the loop hands a callback once a seed's trial is told."""
    import optuna

    from tuner.search.loop import FinishedTrial

    attrs = {"seed_step": step} | ({} if drop is None else {"metric_drop": drop})
    trial = optuna.trial.create_trial(state=getattr(optuna.trial.TrialState, state), user_attrs=attrs,
                                      values=[0.0, 1.0] if state == "COMPLETE" else None)
    return FinishedTrial(trial, None, 0.0, done, budget)


def test_seeds_are_queued_one_at_a_time_and_the_path_is_cut_and_bisected_where_a_seed_fails():
    from tuner.search.seeding import PathCheck

    path = [seed(i, 0.001 * i, 10.0 - i) for i in range(13)]  # predicted feasible (<= 0.01) up to step 10
    queued, lines = [], []
    check = PathCheck(path, [path[2], path[6], path[10], path[11]], 0.01, lambda s: queued.append(s.step),
                      lines.append)
    check.start()
    assert queued == [2]  # one at a time, in path order
    check(None, measured(2, 0.004))
    assert queued == [2, 6]
    check(None, measured(6, 0.15))  # predicted 0.006: the drops did not add up past step 2
    assert queued == [2, 6, 4]  # 10 and 11 dropped; halfway between 2 (feasible) and 6 instead
    assert any("step 6" in line and "cut" in line and "[10, 11]" in line for line in lines)
    check(None, measured(4, 0.008))
    assert queued == [2, 6, 4, 5]
    check(None, measured(5, None, state="PRUNED"))  # a seed that failed to build parts from its prediction too
    assert queued == [2, 6, 4, 5]  # 4 and 5 are adjacent: nothing left between them
    check(None, measured(3, 0.0))  # not a queued seed (another trial's attributes): ignored
    assert queued == [2, 6, 4, 5] and check.feasible_step == 4 and check.infeasible_step == 5


def test_a_seed_past_the_constraint_measured_infeasible_cuts_nothing_and_the_count_is_kept():
    from tuner.search.seeding import PathCheck

    path = [seed(i, 0.004 * i, 10.0 - i) for i in range(6)]  # feasible up to step 2
    queued = []
    check = PathCheck(path, [path[1], path[2], path[3]], 0.01, lambda s: queued.append(s.step), lambda line: None)
    check.start()
    for step, drop in ((1, 0.003), (2, 0.009), (3, 0.02)):  # step 3 was predicted past the constraint
        check(None, measured(step, drop))
    assert queued == [1, 2, 3] and check.infeasible_step is None
    check = PathCheck(path, [path[1], path[2]], 0.01, lambda s: queued.append(s.step), lambda line: None)
    queued.clear()
    check.start()
    check(None, measured(1, 0.5))  # cut at 1: nothing between fp32 (0) and 1; the second seed is dropped
    assert queued == [1] and check.left == 1 and not check.todo


def test_no_seed_is_queued_once_the_budget_has_no_room_for_it():
    from tuner.search.seeding import PathCheck

    path = [seed(i, 0.001 * i, 10.0 - i) for i in range(5)]
    queued = []
    check = PathCheck(path, path[1:], 0.01, lambda s: queued.append(s.step), lambda line: None)
    check.start()
    check(None, measured(1, 0.001, done=3, budget=5))
    assert queued == [1, 2]
    check(None, replace(measured(2, 0.002, done=4, budget=5), in_flight=1))  # the last trial is already out
    assert queued == [1, 2] and check.todo  # left unqueued rather than WAITING in the study past the budget
