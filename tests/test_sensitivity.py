"""The sensitivity pass on a small model built here: real probes through a real executor, subset-scored."""

from dataclasses import replace
from pathlib import Path

import pytest
import tiny_mlp
from test_study_loop import SPACE

from tuner.build.layers import layer_op_types
from tuner.build.prune import pruning_groups
from tuner.core.candidate import Candidate
from tuner.executors import InProcessExecutor
from tuner.experiment import EvalSettings
from tuner.search.sensitivity import (
    PRUNE,
    SensitivityRow,
    layer_groups,
    markdown_table,
    needs_whole_set,
    probes,
    ranking,
    read_rows,
    run_sensitivity,
    target_stderr,
)
from tuner.space import SearchSpace, load_space_file
from tuner.taskref import TaskRef

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sensitivity")
    (folder / "space.yaml").write_text(SPACE)
    task = tiny_mlp.make_task(outlier=1e4)
    space = SearchSpace(load_space_file(folder / "space.yaml"), layer_op_types(task.model, task.example_inputs),
                        pruning_groups(task.model, task.example_inputs, task.output_layers))
    executor = InProcessExecutor(TaskRef("tiny_mlp.py:make_task", {"outlier": 1e4}, TESTS),
                                 EvalSettings(warmup=1, repeats=3), folder / "artifacts", task=task)
    executor.submit("fp32", Candidate())
    ((_, baseline),) = executor.results()
    yield folder, space, executor, baseline.metric
    executor.close()


def test_probes_cover_every_group_choice_and_pruning_ratio(setup):
    _, space, _, _ = setup
    todo = probes(space)
    assert layer_groups(space) == {"0": ("0",), "2": ("2",), "4": ("4",)}
    precision = [(p.group, p.choice) for p in todo if p.kind == "precision"]
    assert precision == [("0", "int8"), ("2", "int8"), ("4", "int8")]
    assert {(p.group, p.choice) for p in todo if p.kind == PRUNE} == {(g, r) for g in space.prune_choices
                                                                      for r in ("0.25", "0.5")}
    one_in = next(p for p in todo if p.group == "2" and p.kind == "precision").candidate
    assert one_in.quantized_layers == {"2": "int8"} and not one_in.is_pruned
    one_out = next(p for p in probes(space, "one_out") if p.group == "2").candidate
    assert one_out.quantized_layers == {"0": "int8", "4": "int8"}
    with pytest.raises(ValueError, match="one_in"):
        probes(space, "leave_one")


def test_the_ranking_puts_the_fragile_layer_first_and_a_second_pass_resumes(setup):
    folder, space, executor, baseline = setup
    cache, lines = folder / "sensitivity.jsonl", []
    todo = [p for p in probes(space) if p.kind == "precision"]
    rows = run_sensitivity(executor, todo, baseline, True, 200, cache, lines.append)
    assert [r.group for r in rows] == ["0", "2", "4"] and all(r.error is None for r in rows)
    first, *others = ranking(rows, "int8")
    assert first.group == "0" and first.drop > 0.3  # its per-tensor scale is stretched by the outlier
    assert all(r.drop < first.drop / 3 for r in others)
    assert all(r.stderr is not None and r.stderr >= 0 for r in rows)
    assert "| 0 | int8 |" in markdown_table(rows, "accuracy").splitlines()[2]

    again = run_sensitivity(executor, todo, baseline, True, 200, cache, lines.append)
    assert again == rows and "3 probes from sensitivity.jsonl, 0 to go" in lines[-1]
    assert len(read_rows(cache)) == 3  # nothing evaluated twice


def test_pruning_probes_and_failures_are_rows_too(setup):
    folder, space, executor, baseline = setup
    todo = [p for p in probes(space) if p.kind == PRUNE]
    unrunnable = Candidate(precision=(("0", "int8"),), opt_level="basic")  # refused before any build
    todo.append(type(todo[0])("precision", "0", ("0",), "int8@basic", unrunnable))
    rows = run_sensitivity(executor, todo, baseline, True, None, folder / "prune.jsonl", lambda line: None)
    assert len(rows) == len(todo)
    failed = [r for r in rows if r.error]
    assert [r.choice for r in failed] == ["int8@basic"] and "int8 needs opt_level" in failed[0].error
    assert all(r.drop is not None and r.stderr is None for r in rows if not r.error)  # full set: no error bar
    assert ranking(rows)[0].error  # a failed probe is shown first: the most sensitive of all


@pytest.mark.slow  # two passes over every probe: in the full suite
def test_a_probe_too_uncertain_on_its_subset_is_scored_again_on_the_whole_set(setup):
    folder, space, executor, baseline = setup
    todo = [p for p in probes(space) if p.kind == "precision"]
    whole = {r.id: r for r in run_sensitivity(executor, todo, baseline, True, None, folder / "whole.jsonl",
                                              lambda line: None)}
    first = {r.id: r for r in run_sensitivity(executor, todo, baseline, True, 16, folder / "one_look.jsonl",
                                              lambda line: None)}
    assert not any(r.whole_set for r in first.values()) and all(r.whole_set for r in whole.values())
    # The fragile layer flips sampled predictions (a measured, non-zero error); the others flip none of 16.
    assert first["precision|0|int8"].stderr > 0
    assert {r.id for r in first.values() if r.stderr == 0} == {"precision|2|int8", "precision|4|int8"}

    cache, lines = folder / "two_looks.jsonl", []
    rows = {r.id: r for r in run_sensitivity(executor, todo, baseline, True, 16, cache, lines.append,
                                             target_stderr=1.0)}
    again = {i for i, r in first.items() if needs_whole_set(r, 1.0)}
    assert again == {"precision|2|int8", "precision|4|int8"}  # a zero error from a subset proves nothing
    assert any("2 of 3 probes not precise enough on 16 samples" in line for line in lines)
    for i, row in rows.items():
        expected = whole[i] if i in again else first[i]
        assert (row.metric, row.drop, row.whole_set) == (expected.metric, expected.drop, expected.whole_set)
    assert len(read_rows(cache)) == 3 + 2  # the first look stays in the file; the second replaces it
    assert run_sensitivity(executor, todo, baseline, True, 16, cache, lines.append, target_stderr=1.0) == \
        list(rows.values()) and len(read_rows(cache)) == 5  # resumed: nothing scored again

    # A target below the fragile probe's error sends it to the whole set as well.
    tight = run_sensitivity(executor, todo, baseline, True, 16, folder / "tight.jsonl", lambda line: None,
                            target_stderr=first["precision|0|int8"].stderr / 2)
    assert all(r.whole_set and r.metric == whole[r.id].metric for r in tight)


def test_the_target_error_keeps_a_seeds_summed_prediction_within_a_quarter_of_the_allowed_drop():
    assert target_stderr(0.02, 36) == pytest.approx(0.02 / 24)
    assert target_stderr(None, 36) is None and target_stderr(0.01, 0) is None
    row = SensitivityRow("precision", "0", "int8", ("0",), 0.9, 0.01, 0.002, 1.0)
    assert needs_whole_set(row, 0.001) and not needs_whole_set(row, 0.003)
    assert not needs_whole_set(replace(row, whole_set=True, stderr=None), 0.001)
    assert not needs_whole_set(replace(row, metric=None, drop=None, stderr=None, error="failed"), 0.001)


def test_above_max_groups_layers_are_probed_by_role_across_blocks_or_else_by_block():
    from types import SimpleNamespace

    def space(names):
        return SimpleNamespace(layers=names, precision_choices={n: ("fp32", "int8") for n in names})

    roles = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")
    bert = [f"encoder.layer.{i}.{role}" for i in range(12) for role in roles]
    groups = layer_groups(space(bert), max_groups=48)
    assert list(groups) == [f"encoder.layer.{{}}.{role}" for role in roles]
    assert groups["encoder.layer.{}.output.dense"] == tuple(f"encoder.layer.{i}.output.dense" for i in range(12))
    assert layer_groups(space(bert[:48]), max_groups=48) == {n: (n,) for n in bert[:48]}  # few enough: alone
    # a CNN's stages: the same position in each stage's blocks is one role
    resnet = [f"stages.{s}.layers.{b}.layer.{c}.conv" for s in range(4) for b in range(3) for c in range(3)]
    assert len(layer_groups(space(resnet), max_groups=20)) == 9
    # names that repeat no role: by block
    flat = [f"features.{i}.conv" for i in range(30)]
    assert layer_groups(space(flat), max_groups=20) == {f"features.{i}": (f"features.{i}.conv",) for i in range(30)}
