"""`tuner run` / `tuner front` / `tuner pick` for real: local Ray, Optuna journal, MLflow sqlite store."""

import csv
import json
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from conftest import FAST_EXPORTER, SMALL_TASK_ARGS
from mlflow.tracking import MlflowClient

from tuner.cli import main
from tuner.core.storage import load_finished_study
from tuner.measure.quality import score
from tuner.measure.runtime import create_session
from tuner.results.front import hypervolume

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def write_experiment(tmp_path, name, trials, task="tuner.tasks.digits_cnn:make_task",
                     space=str(REPO / "search_spaces" / "cnn_int8_prune.yaml"), task_args=SMALL_TASK_ARGS, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        task: {task}
        task_args: {json.dumps(task_args)}
        search_space: {space}
        trials: {trials}
        seed: 1
        max_metric_drop: 0.02
        front_every: 2
        latency: {{threads: 1, batch_size: 1, warmup: 2, repeats: 10}}
    """) + extra)
    return path


def runs_by_role(client, experiment_name):
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags.get("tuner.role") == "study"],
            [r for r in runs if r.data.tags.get("tuner.role") == "trial"])


def http_get(url: str, timeout: float = 5.0) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class Server:
    """A real server process on 127.0.0.1, waited for until it answers, stopped with its process group."""

    def __init__(self, argv: list[str], url: str, probe: str, log: Path, timeout: float = 60.0):
        import subprocess
        import time

        self.url = url
        self.log = open(log, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                http_get(url + probe, timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{argv[0]} did not come up: {log.read_text()[-2000:]}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except Exception:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_dashboard(journal: Path) -> Server:
    port = free_port()
    return Server([str(Path(sys.executable).parent / "optuna-dashboard"), str(journal), "--port", str(port),
                   "--quiet"], f"http://127.0.0.1:{port}", "/api/studies", journal.parent / "dashboard.log")


def test_run_resume_front_pick(tmp_path, monkeypatch, capsys, small_task, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    config = write_experiment(tmp_path, "e2e", trials=6, extra=FAST_EXPORTER + "\n")
    assert main(["run", str(config), "--workers", "2", "--tracking-uri", uri, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "latency re-check: " in out
    assert "% of a trial" in out.split("median seconds per completed trial (")[1].splitlines()[0]

    client = MlflowClient(uri)
    parents, trials = runs_by_role(client, "e2e")
    assert len(parents) == 1 and len(trials) == 6
    parent = parents[0]
    parent_files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "references.csv", "pareto.png", "pareto.html", "front_layers.png", "inputs"} <= parent_files
    # the live front: hypervolume logged while the study ran (every 2 trials) and at the end; its last value is
    # the one the front in pareto.csv spans up to (fp32 latency, metric constraint). Its size depends on measured
    # latencies, so only its consistency with the recorded front is asserted.
    history = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [m.step for m in history] == [2, 4, 6]
    assert all(a.value <= b.value for a, b in zip(history, history[1:]))  # a front only grows its dominated area
    study = load_finished_study("e2e")
    with open(tmp_path / "tuner-runs" / "e2e" / "pareto.csv") as f:
        front_csv = list(csv.DictReader(f))
    threshold = study.user_attrs["baseline_metric"] - 0.02
    expected = hypervolume([(float(r["latency_ms"]), -float(r["accuracy"])) for r in front_csv],
                           (study.user_attrs["baseline_latency_ms"], -threshold))
    assert history[-1].value == pytest.approx(expected)
    html = Path(client.download_artifacts(parent.info.run_id, "pareto.html", str(tmp_path / "dl")))
    text = html.read_text()
    assert "Plotly" in text and "trial 0\\u003cbr\\u003eaccuracy" in text and "Pareto front" in text
    assert {f.path for f in client.list_artifacts(parent.info.run_id, "inputs")} == {
        "inputs/e2e.yaml", "inputs/cnn_int8_prune.yaml"}
    assert sorted(int(r.data.tags["tuner.trial_number"]) for r in trials) == list(range(6))
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        files = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert "candidate.json" in files
        if run.data.tags["tuner.state"] == "COMPLETE":
            assert {"accuracy", "latency_ms", "latency_p90_ms", "latency_cv", "size_mb"} <= set(run.data.metrics)
        on_front = run.data.tags["tuner.pareto"] == "true"
        assert ("model.onnx" in files) == on_front

    front_runs = [r for r in trials if r.data.tags["tuner.pareto"] == "true"]
    assert front_runs
    # the front was timed again once no build ran, on the same meter, and both numbers are kept
    check = load_finished_study("e2e").user_attrs["latency_check"]
    assert check["retimed"] == check["front_trials"] == len(front_runs)
    for run in front_runs:
        number = run.data.tags["tuner.trial_number"]
        assert run.data.metrics["latency_alone_ms"] == pytest.approx(check["latency_alone_ms"][number])
    assert check["min_ratio"] <= check["median_ratio"] <= check["max_ratio"]
    assert "latency_check_median_ratio" in parent.data.metrics
    # fp32 (trial 0) and uniform int8 (trial 1) are trials, so the front contains or dominates each one that
    # meets the metric constraint (which one does depends on accuracy only; which is faster is not asserted).
    by_number = {int(r.data.tags["tuner.trial_number"]): r for r in trials}
    feasible_refs = [ref for ref in (0, 1) if study.trials[ref].user_attrs["metric_drop"] <= 0.02]
    assert 0 in feasible_refs  # fp32 itself drops nothing
    for ref in feasible_refs:
        m = by_number[ref].data.metrics
        assert any(f.data.metrics["accuracy"] >= m["accuracy"] and f.data.metrics["latency_ms"] <= m["latency_ms"]
                   for f in front_runs)
    csv_rows = (tmp_path / "tuner-runs" / "e2e" / "pareto.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + len(front_runs)

    # Running the same experiment again continues the study: more trials, same parent, no duplicates.
    assert main(["run", str(config), "--trials", "8", "--workers", "2", "--tracking-uri", uri,
                 "--no-progress"]) == 0
    parents, trials = runs_by_role(client, "e2e")
    assert len(parents) == 1 and len(trials) == 8
    assert sorted(int(r.data.tags["tuner.trial_number"]) for r in trials) == list(range(8))

    capsys.readouterr()
    assert main(["front", "e2e"]) == 0
    assert "latency_ms" in capsys.readouterr().out

    capsys.readouterr()
    assert main(["pick", "e2e", "--tracking-uri", uri]) == 0  # no constraint: the front is listed
    assert "pick one with a constraint" in capsys.readouterr().out

    out = tmp_path / "picked"
    assert main(["pick", "e2e", "--min-accuracy", "0.5", "--out", str(out), "--tracking-uri", uri,
                 "--register", "e2e-model", "--alias", "champion"]) == 0
    record = json.loads((out / "candidate.json").read_text())
    runtime = record["runtime"]
    session = create_session(out / "model.onnx", runtime["opt_level"],
                             disabled_optimizers=tuple(runtime["disabled_optimizers"]))
    expected = score(session, small_task.evaluation)
    assert expected == record["metrics"]["accuracy"]  # exactly, not approximately
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(props["tuner.candidate"]) == record["candidate"]
    card = (out / "MODEL_CARD.md").read_text()
    assert f"e2e — trial {record['trial']}" in card and "load_artifact('model.onnx')" in card
    assert record["environment"]["onnxruntime"] in card and record["artifact_sha256"] in card
    # the fastest front member that meets the constraint was picked
    fastest = min((r for r in runs_by_role(client, "e2e")[1] if r.data.tags["tuner.pareto"] == "true"),
                  key=lambda r: r.data.metrics["latency_ms"])
    assert record["trial"] == int(fastest.data.tags["tuner.trial_number"])

    # registered with metrics and candidate, reachable by alias, and it loads and predicts through mlflow.pyfunc
    version = client.get_model_version_by_alias("e2e-model", "champion")
    assert version.run_id == record["mlflow_run_id"]
    assert float(version.tags["metric.accuracy"]) == pytest.approx(record["metrics"]["accuracy"])
    assert version.tags["tuner.trial"] == str(record["trial"])
    import mlflow.pyfunc
    import numpy as np

    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/e2e-model@champion")
    x = small_task.evaluation.inputs[0][:16]
    predicted = pyfunc.predict({"x": x})
    logits = next(iter(predicted.values())) if isinstance(predicted, dict) else np.asarray(predicted)
    np.testing.assert_allclose(logits, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)

    # the study's storage opens in optuna-dashboard as it is
    dashboard = start_dashboard(tmp_path / "tuner-runs" / "e2e" / "optuna.journal")
    try:
        studies = json.loads(http_get(f"{dashboard.url}/api/studies"))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["e2e"]
        detail = json.loads(http_get(f"{dashboard.url}/api/studies/{studies[0]['study_id']}?after=0"))
        # the dashboard computes its own front (without the metric constraint), so only its presence is checked
        assert len(detail["trials"]) == 8 and detail["best_trials"]
        assert {t["number"] for t in detail["trials"]} == set(range(8))
    finally:
        dashboard.stop()

    # verify: a fresh process reloads the artifact, re-scores and re-times it
    capsys.readouterr()
    assert main(["verify", "e2e", "--trial", str(record["trial"])]) == 0
    report = capsys.readouterr().out
    assert "(exact)" in report and "sha256 same" in report and "environment: unchanged" in report
