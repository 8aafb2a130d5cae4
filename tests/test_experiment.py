import re
import textwrap

import pytest

from tuner.cli import main
from tuner.core.errors import TaskError
from tuner.experiment import ExperimentError, load_experiment
from tuner.taskref import TaskRef


def write(tmp_path, text, space=True):
    if space:
        (tmp_path / "space.yaml").write_text("layers:\n  - match: fc\n    precision: [fp32, int8]\n")
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_file_resolves_paths_relative_to_itself(tmp_path):
    exp = load_experiment(write(tmp_path, """
        name: demo
        task: tuner.tasks.digits_cnn:make_task
        search_space: space.yaml
        latency: {threads: 2, batch_size: 4}
    """))
    assert exp.space_path == tmp_path / "space.yaml"
    assert exp.eval_settings().threads == 2 and exp.eval_settings().batch_size == 4
    assert exp.trials == 60 and exp.sampler == "auto"


@pytest.mark.parametrize("body, message", [
    ("name: demo\ntask: m:f\nsearch_space: space.yaml\nsampler: cmaes\n", r"field 'sampler'.*got 'cmaes'"),
    ("name: demo\ntask: m:f\nsearch_space: space.yaml\nlatency: {threads: 0}\n", r"field 'latency.threads'.*got 0"),
    ("name: demo\ntask: m:f\nsearch_space: space.yaml\ntrails: 5\n", r"field 'trails'.*not permitted"),
    ("name: demo\ntask: m:f\nsearch_space: space.yaml\npending_timeout_s: 0\n", r"field 'pending_timeout_s'.*got 0"),
    ("name: demo\ntask: m:f\nsearch_space: space.yaml\nlatency: {resource: ''}\n",
     r"field 'latency.resource'.*got ''"),
    ("task: m:f\nsearch_space: space.yaml\n", r"field 'name': required but missing"),
    ("name: demo\ntask: m:f\nsearch_space: other.yaml\n", r"field 'search_space': file .*other.yaml does not exist"),
])
def test_errors_name_file_field_and_value(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(ExperimentError, match=message) as err:
        load_experiment(path)
    assert str(path) in str(err.value)


def test_task_from_a_file_path(tmp_path):
    (tmp_path / "my_task.py").write_text(textwrap.dedent("""
        import numpy as np, torch
        from tuner import Evaluation, Task

        def build(hidden=8):
            model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
            x = np.zeros((10, 4), np.float32)
            return Task(model=model, example_inputs=(torch.zeros(1, 4),), calibration_inputs=[(torch.zeros(2, 4),)],
                        evaluation=Evaluation(inputs=(x,), metric=lambda out: float(out.shape[1])))
    """))
    task = TaskRef("my_task.py:build", {"hidden": 16}, str(tmp_path)).load()
    assert task.output_layers == ("2",)  # default: the last Linear
    assert task.model[0].out_features == 16


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "must look like"),
    ("missing.py:f", "file .*missing.py does not exist"),
    ("tuner.tasks.digits_cnn:nope", "has no function 'nope'"),
    ("no_such_package_xyz:f", "cannot import module"),
])
def test_bad_task_specs(tmp_path, spec, message):
    with pytest.raises(TaskError, match=message):
        TaskRef(spec, {}, str(tmp_path)).load()


@pytest.mark.parametrize("space, message", [
    ("layers:\n  - match: fc\n    precision: [int4]\n", "layers[0] (match 'fc'): precision 'int4' cannot be built"),
    ("layers:\n  - match: fc\n    precision: [int4-b32]\n",
     "layers[0] (match 'fc'): precision 'int4-b32' runs on MatMul/Gather nodes only, but its layers became Gemm nodes"),
    ("layers:\n  - match: head\n    precision: [fp32, int8]\n", "layers[0] (match 'head'): matches no layer"),
])
def test_cli_reports_config_errors_before_any_trial(tmp_path, monkeypatch, capsys, space, message):
    from conftest import SMALL_TASK_ARGS


    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(space)
    (tmp_path / "exp.yaml").write_text(
        f"name: bad\ntask: tuner.tasks.digits_cnn:make_task\ntask_args: {SMALL_TASK_ARGS}\nsearch_space: space.yaml\n")
    assert main(["run", "exp.yaml", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "space.yaml" in err
    assert not (tmp_path / "tuner-runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("kind, cls", [("auto", "TPESampler"), ("tpe", "TPESampler"), ("nsga2", "NSGAIISampler"), ("gp", "GPSampler"),
                                       ("random", "RandomSampler")])
def test_sampler_from_config(kind, cls):
    from tuner.search.samplers import make_sampler

    sampler = make_sampler(kind, 0)
    assert type(getattr(sampler, "base", sampler)).__name__ == cls


def test_unknown_sampler_is_rejected():
    from tuner.search.samplers import make_sampler

    with pytest.raises(ValueError, match="got 'cmaes'"):
        make_sampler("cmaes", 0)


def test_resume_names_what_is_missing(tmp_path, monkeypatch, capsys):
    import optuna

    from tuner.core.storage import open_study

    monkeypatch.chdir(tmp_path)
    assert main(["resume", "nothing-here"]) == 2
    assert "no study 'nothing-here'" in capsys.readouterr().err
    run_dir = tmp_path / "tuner-runs" / "moved"
    run_dir.mkdir(parents=True)
    study = open_study(run_dir, "moved", optuna.samplers.RandomSampler(), ["maximize", "minimize"])
    study.set_user_attr("experiment_file", str(tmp_path / "gone.yaml"))
    assert main(["resume", "moved"]) == 2
    err = capsys.readouterr().err
    assert "gone.yaml no longer exists" in err and "tuner run EXPERIMENT" in err


def test_a_task_that_raises_while_loading_is_one_error_line_naming_task_and_place(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken.py").write_text("def build():\n    raise FileNotFoundError('weights.pt')\n")
    (tmp_path / "bad_import.py").write_text("import no_such_module_xyz\n\ndef build():\n    pass\n")
    (tmp_path / "space.yaml").write_text("layers:\n  - match: fc\n    precision: [fp32]\n")
    monkeypatch.chdir(tmp_path)
    for task, message in (("broken.py:build", r"task 'broken.py:build' raised while loading \(at .*broken.py:2\): "
                                              r"FileNotFoundError: weights.pt"),
                          ("bad_import.py:build", r"importing .*bad_import.py raised \(at .*bad_import.py:1\): "
                                                  r"ModuleNotFoundError")):
        (tmp_path / "exp.yaml").write_text(f"name: broken\ntask: {task}\nsearch_space: space.yaml\n")
        assert main(["run", "exp.yaml", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_during_run_says_the_study_is_saved_and_how_to_continue(tmp_path, monkeypatch, capsys):
    import tuner.api

    (tmp_path / "space.yaml").write_text("layers:\n  - match: fc\n    precision: [fp32]\n")
    (tmp_path / "exp.yaml").write_text("name: stopped\ntask: tuner.tasks.digits_cnn:make_task\n"
                                       "search_space: space.yaml\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuner.api, "run", interrupted)
    assert main(["run", str(tmp_path / "exp.yaml"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: study 'stopped' is saved" in err and "tuner resume stopped" in err


def test_pick_bounds_a_metric_minimized_with_a_max_flag():
    from tuner.cli import _parse_min_metric, metric_flag

    assert metric_flag("perplexity", maximize=False) == "--max-perplexity"
    assert _parse_min_metric(["--max-perplexity", "25.4"], "perplexity", maximize=False) == 25.4
    assert _parse_min_metric(["--min-accuracy=0.97"], "accuracy") == 0.97
    with pytest.raises(SystemExit, match="this study's metric is 'perplexity'"):
        _parse_min_metric(["--min-perplexity", "25"], "perplexity", maximize=False)
