"""Stopping `tuner run` with a real signal: the first SIGINT lets the trial in flight finish, publishes the front,
marks the MLflow study run KILLED, says how to continue and exits 130; a second one stops at once. Either way
nothing is left RUNNING and the study continues where it stopped."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import FAST_EXPORTER
from mlflow.tracking import MlflowClient

from tuner.core.storage import load_finished_study

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow  # each waits for a task to load, a baseline and a trial scored for 2 s


def start(tmp_path, name, uri):
    (tmp_path / "space.yaml").write_text("layers:\n  - match: 're:.*'\n    precision: [fp32, int8]\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        task: tiny_mlp:make_task
        task_args: {{scoring_marker: {tmp_path / "scoring"}, scoring_s: 2}}
        search_space: space.yaml
        trials: 500
        max_metric_drop: 0.05
        seeding: {{seeds: 0}}  # the scoring marker must catch a trial, not a sensitivity probe
        latency: {{threads: 1, warmup: 1, repeats: 5}}
        {FAST_EXPORTER}
    """))
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "run", str(path), "--in-process", "--no-progress",
                             "--output-dir", str(tmp_path / "runs"), "--tracking-uri", uri],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(line.startswith("fp32 baseline:") for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    (tmp_path / "scoring").unlink()
    while not (tmp_path / "scoring").exists():  # a trial is being scored: it is in flight for 2 s
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    return proc, uri


def study_run_status(uri, name):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.`tuner.role` = 'study'")
    return runs[0].info.status


def test_first_sigint_finishes_the_trial_in_flight_and_exits_130(tmp_path, mlflow_uri):
    proc, uri = start(tmp_path, "stopme", mlflow_uri)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT: stopping. No new trials; the 1 in flight get up to 30 s to finish" in err
    assert "(1 trial(s) in flight finished, 0 cancelled and queued to run again)" in err, err
    assert f"Continue with `tuner resume stopme` --output-dir {tmp_path / 'runs'}." in err and "Traceback" not in err
    study = load_finished_study("stopme", tmp_path / "runs")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and states.count(optuna.trial.TrialState.COMPLETE) >= 1
    assert not [t for t in study.trials if t.user_attrs.get("interrupted")]  # the one in flight finished
    assert (tmp_path / "runs" / "stopme" / "pareto.csv").is_file()
    assert study_run_status(uri, "stopme") == "KILLED"


def test_second_sigint_stops_at_once_and_the_trial_in_flight_runs_again(tmp_path, mlflow_uri):
    proc, uri = start(tmp_path, "twice", mlflow_uri)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Continue with `tuner resume twice`" in err and "Traceback" not in err
    study = load_finished_study("twice", tmp_path / "runs")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(interrupted) == 1 and interrupted[0].state == optuna.trial.TrialState.FAIL
    assert any(t.system_attrs.get("fixed_params") == interrupted[0].params for t in waiting)  # to run again
    assert study_run_status(uri, "twice") == "KILLED"
