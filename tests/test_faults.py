"""Faults with real processes on a real local Ray: a worker that dies mid-candidate, a candidate that hangs."""

import json
import textwrap

import pytest
from conftest import FAST_EXPORTER, SMALL_TASK_ARGS

from tuner.cli import main
from tuner.core.storage import load_finished_study

pytestmark = pytest.mark.slow

FAULTY_TASK = f"""
import os, time
import numpy as np, torch
from tuner import Evaluation, Task
from tuner.tasks.digits_cnn import make_task

def build(mode):
    task = make_task(**{SMALL_TASK_ARGS!r})
    x = task.evaluation.inputs[0]
    with torch.no_grad():
        reference = task.model(torch.from_numpy(x)).numpy()

    def metric(logits):  # any model that is not numerically the fp32 one misbehaves
        if np.abs(logits - reference).max() > 1e-3:
            if mode == "crash":
                os._exit(3)  # the worker process dies, as on a lost node or an OOM kill
            time.sleep(600)  # hangs
        return float((logits.argmax(1) == reference.argmax(1)).mean())

    return Task(task.model, task.example_inputs, task.calibration_inputs, Evaluation(inputs=(x,), metric=metric),
                output_layers=("fc",))
"""


def run_faulty(tmp_path, monkeypatch, mode, uri):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "faulty.py").write_text(FAULTY_TASK)
    (tmp_path / "space.yaml").write_text("layers:\n  - match: 're:.*'\n    precision: [fp32, int8]\n")
    (tmp_path / "exp.yaml").write_text(textwrap.dedent(f"""
        name: faulty-{mode}
        task: faulty.py:build
        task_args: {json.dumps({"mode": mode})}
        search_space: space.yaml
        trials: 3
        candidate_timeout_s: 20
        retries: 1
        latency: {{threads: 1, batch_size: 1, warmup: 1, repeats: 5}}
        {FAST_EXPORTER}
    """))
    assert main(["run", "exp.yaml", "--workers", "2", "--tracking-uri", uri, "--no-progress"]) == 0
    return load_finished_study(f"faulty-{mode}")


def test_a_candidate_whose_worker_dies_is_retried_then_failed_and_the_study_completes(tmp_path, monkeypatch,
                                                                                     mlflow_uri):
    study = run_faulty(tmp_path, monkeypatch, "crash", mlflow_uri)
    assert len(study.trials) == 3 and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert study.trials[0].state.name == "COMPLETE"  # fp32 is unaffected
    reason = study.trials[1].user_attrs["fail_reason"]  # uniform int8: its worker died twice (1 retry)
    assert study.trials[1].state.name == "PRUNED" and "worker died 2 time(s) on this candidate" in reason


def test_a_hanging_candidate_times_out_its_worker_is_replaced_and_the_study_completes(tmp_path, monkeypatch,
                                                                                     mlflow_uri):
    study = run_faulty(tmp_path, monkeypatch, "hang", mlflow_uri)
    assert len(study.trials) == 3 and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert study.trials[0].state.name == "COMPLETE"
    assert "timed out after 20 s" in study.trials[1].user_attrs["fail_reason"]
