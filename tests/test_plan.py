"""The default plan (tuner.search.plan): which kinds it works with, the repair's search over the sensitivity
ranking, and, on a small model built here with one deliberately fragile layer, real builds in the order the
plan gives them. Latencies in these tests are given, never measured."""

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from tiny_mlp import make_task

from tuner.build.layers import layer_op_types
from tuner.core.candidate import Candidate
from tuner.core.records import Fidelity, metric_drop
from tuner.executors import InProcessExecutor
from tuner.executors.base import evaluate_all
from tuner.experiment import EvalSettings
from tuner.search.plan import (
    PlanQueue,
    Reference,
    RepairSearch,
    choose_targets,
    fill_points,
    groups_by_sensitivity,
    mix,
)
from tuner.search.sensitivity import probes, run_sensitivity
from tuner.space import SearchSpace, load_space_file
from tuner.taskref import TaskRef

MAX_DROP = 0.02
TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return _space(tmp_path_factory.mktemp("plan"))


def test_targets_are_the_fastest_feasible_reference_and_the_infeasible_kind_closest_to_the_constraint():
    refs = [Reference("int8", 0.30, 1.0, False), Reference("int8-dynamic-pc", 0.03, 1.2, False),
            Reference("int8-dynamic", 0.01, 1.5, True), Reference("int4", 0.02, 3.0, True),
            Reference("fp32", 0.0, 2.0, True)]
    targets = choose_targets(refs)
    assert targets.best.kind == "int8-dynamic" and targets.repair.kind == "int8-dynamic-pc"
    assert targets.kinds == ["int8-dynamic-pc", "int8-dynamic"]
    # nothing faster than the best feasible one misses: no repair, only the fill (ranked at the best kind)
    assert choose_targets(refs[2:]).repair is None and choose_targets(refs[2:]).kinds == ["int8-dynamic"]
    # every kind misses: the repair keeps its sensitive groups at fp32; nothing to fill
    everything_misses = [Reference("int8", 0.3, 1.0, False), Reference("fp32", 0.0, 2.0, True)]
    assert choose_targets(everything_misses).kinds == ["int8"] and choose_targets(everything_misses).best.kind == "fp32"
    assert choose_targets([Reference("int8", 0.3, 1.0, False)]) is None  # no fp32 measured: no plan
    # a kind much slower than the fastest infeasible one is passed over, although closer to the constraint
    mpnet = [Reference("int8-dynamic-pc", 0.12, 1.0, False), Reference("int4", 0.015, 1.3, False),
             Reference("fp32", 0.0, 1.7, True)]
    assert choose_targets(mpnet).repair.kind == "int8-dynamic-pc"


def test_the_fp32_baseline_stands_in_for_an_fp32_reference_whose_timing_failed():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from tuner.core.candidate import Candidate
    from tuner.search.plan import ShareModel, measured_references

    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={
        "reference": "fp32", "fail_reason": "latency failed 3 time(s): ActorDiedError"}))
    study.add_trial(create_trial(values=[32.07, 24.4], params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)},
                                 user_attrs={"reference": "uniform int8-weight-b32", "metric_drop": 0.035}))
    assert choose_targets(measured_references(study, 0.64)) is None  # without the baseline: no plan
    targets = choose_targets(measured_references(study, 0.64, baseline_ms=57.9))
    assert targets.best.kind == "int8-weight-b32" and targets.fp32 == Reference("fp32", 0.0, 57.9, True)
    # without the fp32 profile there is no latency model: the plan spaces its points by the references' latencies
    share = ShareModel(["a", "b"], measured_references(study, 0.64, baseline_ms=57.9))
    assert share.predict(Candidate(precision=(("a", "int8-weight-b32"), ("b", "int8-weight-b32")))) == 24.4
    assert share.predict(Candidate(precision=(("a", "int8-weight-b32"),))) == pytest.approx((24.4 + 57.9) / 2)


@pytest.mark.parametrize("needed,expected", [(1, [1]), (2, [1, 2]), (5, [1, 2, 4, 8, 6, 5]), (12, [1, 2, 4, 8])])
def test_the_repair_doubles_then_halves_the_count_of_groups_kept_safe(needed, expected, space):
    """Feasible once the ``needed`` most sensitive of 12 groups are kept safe: 1, 2, 4, ... then bisection, at
    most 6 builds, never the count already known feasible (all 12: the safe kind's own reference)."""
    search = RepairSearch(space, "int8", "fp32", [(f"g{i}",) for i in range(12)])
    tried = []
    while (point := search.next()) is not None:
        tried.append(point.kept)
        search.measured(point, point.kept >= needed)
    assert tried == expected
    assert search.feasible == (needed if needed < 12 else 12)


def test_fill_points_spread_the_latency_between_the_best_reference_and_fp32(space):
    order = [(layer,) for layer in space.layers]
    best, fp32 = Reference("int8", 0.001, 1.0, True), Reference("fp32", 0.0, 2.0, True)

    def predict(candidate: Candidate) -> float:  # each fp32 layer costs its share of the gap
        return 1.0 + sum(p == "fp32" for _, p in candidate.precision) / len(order)

    points = fill_points(space, best, fp32, order, predict)
    assert [p.kept for p in points] == [1, 2]  # 2x in steps of at most 1.35x: two points between the ends
    assert dict(points[0].candidate.precision)[order[0][0]] == "fp32"  # the most sensitive goes back first
    assert fill_points(space, fp32, fp32, order, predict) == []  # the best is fp32: nothing to fill


def test_the_plan_keeps_the_fragile_layer_safe_first_and_repairs_uniform_int8_in_a_few_builds(tmp_path):
    """tiny_mlp's outlier makes layer 0 fragile under per-tensor int8: the ranking puts it first, and the first
    repair point (layer 0 kept fp32, the rest int8) is feasible, where uniform int8 is not. Real builds."""
    task = make_task(outlier=1e4)
    space = _space(tmp_path, task)
    executor = InProcessExecutor(TaskRef("tiny_mlp.py:make_task", {"outlier": 1e4}, TESTS),
                                 EvalSettings(warmup=1, repeats=3), tmp_path / "artifacts", task=task)
    try:
        _, base = next(evaluate_all(executor, {"fp32": Candidate(opt_level="all")}))
        _, uniform = next(evaluate_all(executor, {"int8": mix(space, "int8", [], "fp32")}))
        assert metric_drop(base.metric, uniform.metric, True) > MAX_DROP  # the reference to repair misses
        rows = run_sensitivity(executor, probes(space), base.metric, True, None, tmp_path / "sensitivity.jsonl",
                               log=lambda line: None)
        order = groups_by_sensitivity(rows, "int8")
        assert order[0] == ("0",)

        measured, queued = [], []
        search = RepairSearch(space, "int8", "fp32", order)
        queue = PlanQueue([], search, MAX_DROP, queued.append, log=lambda line: None)
        queue.start(room=10)
        while queued:
            point = queued.pop(0)
            _, result = next(evaluate_all(executor, {point.label: point.candidate},
                                          fidelity=Fidelity(samples=None, timed=False)))
            feasible = metric_drop(base.metric, result.metric, True) <= MAX_DROP
            measured.append((point.kept, feasible))
            search.measured(point, feasible)
            if (nxt := search.next()) is not None:
                queued.append(nxt)
    finally:
        executor.close()
    assert measured[0] == (1, True)  # one build: the fragile layer kept fp32 is enough
    assert len(measured) <= 2 and search.feasible == 1


def _space(folder: Path, task=None) -> SearchSpace:
    task = task or make_task()
    (folder / "space.yaml").write_text('layers:\n  - match: "re:.*"\n    precision: [fp32, int8]\n')
    return SearchSpace(load_space_file(folder / "space.yaml"), layer_op_types(task.model, task.example_inputs), [])


def test_a_repair_point_no_faster_than_the_best_feasible_reference_ends_the_repair(space):
    from types import SimpleNamespace

    from optuna.trial import TrialState, create_trial

    queued = []
    search = RepairSearch(space, "int8", "fp32", [(f"g{i}",) for i in range(12)])
    queue = PlanQueue([], search, MAX_DROP, queued.append, log=lambda line: None, ceiling_ms=10.0)
    queue.start(room=10)
    assert [p.kept for p in queued] == [1]

    def finish(point, ms, drop):
        trial = create_trial(state=TrialState.COMPLETE, values=[1 - drop, ms],
                             user_attrs={"stage": "plan", "plan": point.label, "metric_drop": drop})
        queue(None, SimpleNamespace(trial=trial, budget=20, done=5, in_flight=0))

    finish(queued[-1], 8.0, 0.05)  # infeasible and fast: the search goes on
    assert [p.kept for p in queued] == [1, 2]
    finish(queued[-1], 10.5, 0.05)  # slower than the best feasible reference: nothing more is queued
    assert [p.kept for p in queued] == [1, 2] and search.next() is None


def test_the_pruned_point_prunes_every_group_by_its_smallest_ratio_on_top_of_the_best_reference(tmp_path):
    from test_study_loop import SPACE

    from tuner.build.prune import pruning_groups
    from tuner.build.recovery import RecoverySettings
    from tuner.evaluate import recovery_settings
    from tuner.experiment import EvalSettings
    from tuner.search.loop import candidate_of
    from tuner.search.plan import LADDER_RECOVERY_BUDGET, plan_attrs, prune_point

    task = make_task()
    (tmp_path / "space.yaml").write_text(SPACE + "recovery: [batchnorm, distill]\n")
    space = SearchSpace(load_space_file(tmp_path / "space.yaml"), layer_op_types(task.model, task.example_inputs),
                        pruning_groups(task.model, task.example_inputs, task.output_layers))
    point = prune_point(space, Reference("int8", 0.0, 1.0, True))
    assert dict(point.candidate.prune) == {group: 0.25 for group in space.prune_choices}
    assert set(dict(point.candidate.precision).values()) == {"int8"} and point.candidate.recovery == "distill"
    params = space.params_of(point.candidate)
    # the longer recovery is not a choice of the space: the queued trial carries it (tests/test_study_loop.py)
    assert point.candidate.recovery_budget == LADDER_RECOVERY_BUDGET
    assert plan_attrs(point)["recovery_budget"] == LADDER_RECOVERY_BUDGET
    assert params["pruned"] is True and space.decode(params) == replace(point.candidate, recovery_budget=1)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(params, user_attrs=dict(plan_attrs(point)))
    assert candidate_of(space, study.ask(space.distributions())) == point.candidate  # what the loop builds
    settings = EvalSettings(distill_steps=30, recovery_time_limit_s=5.0)
    assert recovery_settings(settings, point.candidate) == RecoverySettings(120, settings.distill_lr, 20.0)
    assert prune_point(_space(tmp_path), Reference("int8", 0.0, 1.0, True)) is None  # a space that prunes nothing


def test_the_pruning_ladder_prunes_one_step_further_while_feasible_and_starts_after_the_repair(tmp_path):
    """Pruning groups of tiny_mlp with ratios 0.25 and 0.5: step 1 prunes every group by 0.25, step 2 by 0.5, and
    an infeasible step ends the ladder; with a repair in the plan, the ladder starts once the repair is over."""
    from types import SimpleNamespace

    from optuna.trial import TrialState, create_trial
    from test_study_loop import SPACE

    from tuner.build.prune import pruning_groups
    from tuner.search.plan import PruneLadder

    task = make_task()
    (tmp_path / "space.yaml").write_text(SPACE + "recovery: [batchnorm, distill]\n")
    space = SearchSpace(load_space_file(tmp_path / "space.yaml"), layer_op_types(task.model, task.example_inputs),
                        pruning_groups(task.model, task.example_inputs, task.output_layers))
    ladder = PruneLadder(space, "int8")
    first = ladder.next()
    ladder.measured(first, True)
    second = ladder.next()
    assert {r for _, r in first.candidate.prune} == {0.25} and {r for _, r in second.candidate.prune} == {0.5}
    ladder.measured(second, True)
    assert ladder.next() is None  # no larger ratio in the space
    stopped = PruneLadder(space, "int8")
    stopped.measured(stopped.next(), False)
    assert stopped.next() is None  # an infeasible step ends it

    queued = []
    order = [(layer,) for layer in space.layers]
    queue = PlanQueue([], RepairSearch(space, "int8", "fp32", order, builds=1), MAX_DROP, queued.append,
                      log=lambda line: None, ceiling_ms=10.0, ladder=PruneLadder(space, "int8"))
    queue.start(room=10)
    assert [p.label.startswith("repair") for p in queued] == [True]
    trial = create_trial(state=TrialState.COMPLETE, values=[0.5, 5.0],
                         user_attrs={"stage": "plan", "plan": queued[0].label, "metric_drop": 0.4})
    queue(None, SimpleNamespace(trial=trial, budget=20, done=3, in_flight=0))
    assert queued[-1].label.startswith("prune int8: every group by 0.25")


def test_the_narrowing_halves_the_layers_of_the_last_group_kept_safe(space):
    """The repair kept group 2 (8 layers) safe, but only its layer 6 matters: first half, else second half,
    then halves of the half that was enough; at most 4 builds, each keeping group 1 whole."""
    from tuner.search.plan import NarrowSearch

    last = tuple(f"b{i}" for i in range(8))
    search = NarrowSearch(space, "int8", "fp32", [("a",), last])
    tried = []
    while (point := search.next()) is not None:
        tried.append(point.span)
        assert point.kept == 2 and point.label.startswith("narrow int8: layers")
        search.measured(point, point.span[0] <= 5 < point.span[1])
    assert tried == [(0, 4), (4, 8), (4, 6), (4, 5)]
    assert search.span == (4, 6)


def test_a_feasible_repair_is_followed_by_its_narrowing_and_by_mixes_up_to_the_best_reference(tmp_path):
    """Real space of tiny_mlp (3 layers, one group each here, so no narrowing); the repair of int8 is feasible
    with 1 group fp32 at 4 ms, the best feasible reference (fp32) runs at 10 ms: the mixes that keep 2 groups
    fp32 fill the gap between them. A repair no faster than the reference is followed by nothing."""
    from types import SimpleNamespace

    from optuna.trial import TrialState, create_trial

    space = _space(tmp_path)
    order = [(layer,) for layer in space.layers]

    def predict(candidate):
        return 1.0 + 3.0 * sum(p == "fp32" for _, p in candidate.precision)

    def run(repaired_ms):
        queued = []
        queue = PlanQueue([], RepairSearch(space, "int8", "fp32", order), MAX_DROP, queued.append,
                          log=lambda line: None, ceiling_ms=10.0, predict=predict)
        queue.start(room=10)
        trial = create_trial(state=TrialState.COMPLETE, values=[1.0, repaired_ms],
                             user_attrs={"stage": "plan", "plan": queued[0].label, "metric_drop": 0.001})
        queue(None, SimpleNamespace(trial=trial, budget=20, done=5, in_flight=0))
        return queued

    queued = run(4.0)
    assert [p.kept for p in queued] == [1, 2]
    assert queued[1].label == f"repair int8: 2 most sensitive of {len(order)} groups fp32"
    assert len(order) == 3 and [dict(queued[1].candidate.precision)[layer] for (layer,) in order] == [
        "fp32", "fp32", "int8"]
    assert [p.kept for p in run(10.5)] == [1]
