"""The sensitivity pass on a small model built here: real probes through a real executor, subset-scored."""

from pathlib import Path

import pytest
import tiny_mlp
from test_study_loop import SPACE

from tuner.build.prune import pruning_groups
from tuner.candidate import Candidate
from tuner.executors import InProcessExecutor
from tuner.experiment import EvalSettings
from tuner.sensitivity import PRUNE, layer_groups, markdown_table, probes, ranking, read_rows, run_sensitivity
from tuner.space import SearchSpace, layer_op_types, load_space_file
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
