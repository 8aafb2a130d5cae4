"""Cluster mode and a killed driver, with real processes: a simulated multi-node Ray cluster that loses a node
mid-study, a `ray job submit` job, a driver killed with SIGKILL and resumed, a resource no node has."""

import contextlib
import csv
import json
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
import ray
from conftest import FAST_EXPORTER, SMALL_TASK_ARGS
from mlflow.tracking import MlflowClient
from test_end_to_end import free_port, runs_by_role

from tuner.cli import main
from tuner.core.storage import load_finished_study
from tuner.executors import RayExecutor
from tuner.experiment import EvalSettings, load_experiment
from tuner.search.study import run_study
from tuner.taskref import TaskRef

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

# A task defined in a file of the user's working directory: on a cluster it reaches the workers only through
# Ray's runtime environment.
USER_TASK = f"""
from tuner.tasks.digits_cnn import make_task

def build():
    return make_task(**{SMALL_TASK_ARGS!r})
"""


def write_job(folder: Path, name: str, trials: int, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "user_task.py").write_text(USER_TASK)
    (folder / "space.yaml").write_text((REPO / "search_spaces" / "cnn_int8_prune.yaml").read_text())
    path = folder / "exp.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        task: user_task.py:build
        search_space: space.yaml
        trials: {trials}
        seed: 3
        max_metric_drop: 0.02
        front_every: 100
        {FAST_EXPORTER}
    """) + textwrap.dedent(extra))
    return path


@contextlib.contextmanager
def node_removed_mid_study(cluster, node, artifacts: Path, after: int):
    """Remove ``node`` from ``cluster`` once ``after`` artifacts have come back to the driver; yields an Event
    that tells whether it happened."""
    removed, stop = threading.Event(), threading.Event()

    def watch():
        while not stop.is_set():
            if artifacts.is_dir() and len(list(artifacts.iterdir())) >= after:
                cluster.remove_node(node)
                removed.set()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield removed
    finally:
        stop.set()
        thread.join(timeout=30)


def front_from_values(study: optuna.Study) -> set[int]:
    """The front recomputed from the finished trials alone: feasible, and no other feasible trial dominates."""
    limit = study.user_attrs["max_metric_drop"]
    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.user_attrs["metric_drop"] <= limit]
    return {t.number for t in done if not any(
        o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done)}


def test_a_latency_resource_that_no_node_has_fails_fast_with_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_job(tmp_path, "no-box", 2, "latency: {threads: 1, resource: deploy-box}\n")
    start = time.perf_counter()
    assert main(["run", str(config), "--workers", "1", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "latency.resource 'deploy-box'" in err and "no live node" in err
    assert "CPU=" in err  # what the nodes do have
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "tuner-runs" / "no-box" / "artifacts").exists()  # nothing was built


def test_workers_that_no_node_can_place_fail_after_the_pending_timeout(tmp_path, monkeypatch, mlflow_uri):
    from ray.cluster_utils import Cluster

    from tuner.core.errors import StudyError

    monkeypatch.chdir(tmp_path)
    config = write_job(tmp_path, "no-cpu", 2, "pending_timeout_s: 5\n")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # nothing can run a worker
    try:
        with pytest.raises(StudyError, match=r"no worker could be placed for \d+ s \(pending_timeout_s\): each "
                                             r"needs 1 CPU; 1 live node\(s\)") as err:
            run_study(load_experiment(config), workers=2, address=cluster.address,
                      tracking_uri=mlflow_uri, progress=False)
    finally:
        cluster.shutdown()
    assert str(config) in str(err.value)


def test_a_study_on_a_multi_node_cluster_survives_losing_a_node(tmp_path, monkeypatch, mlflow_uri):
    from ray.cluster_utils import Cluster

    monkeypatch.chdir(tmp_path)
    budget = 10
    config = write_job(tmp_path, "cluster", budget, """
        latency: {threads: 1, warmup: 2, repeats: 10, resource: timing}
        retries: 2
        keep_artifacts: all   # every model stays: the node goes once 4 came back, and each is checked below
    """)
    experiment = load_experiment(config)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"timing": 1}})
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    head_id = cluster.head_node.node_id
    artifacts = tmp_path / "tuner-runs" / "cluster" / "artifacts"
    try:
        with node_removed_mid_study(cluster, doomed, artifacts, after=4) as removed:  # baseline + 3 trials back
            result = run_study(experiment, workers=3, address=cluster.address,
                               tracking_uri=mlflow_uri, progress=False)
    finally:
        cluster.shutdown()
    assert removed.is_set()
    study = load_finished_study("cluster")
    finished = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(finished) == budget and result.n_complete + result.n_failed == budget
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    assert len(complete) >= budget - 1  # a candidate fails only after dying 3 times
    # the candidate the lost node was building ran again on another node
    assert sum(t.user_attrs.get("worker_deaths", 0) for t in finished) >= 1
    # latency was taken only on the node labelled `timing`; builds ran on the others too
    assert {t.user_attrs["environment"]["node_id"] for t in complete} == {head_id}
    assert len({t.user_attrs["environment"]["build_node_ip"] for t in complete}) >= 1
    # artifacts came back through Ray to the driver, byte for byte what the workers measured
    from tuner.measure.environment import file_sha256

    for t in complete:
        assert file_sha256(artifacts / t.user_attrs["key"] / "model.onnx") == t.user_attrs["artifact_sha256"]
    _, trials = runs_by_role(MlflowClient(mlflow_uri), "cluster")
    assert sorted(int(r.data.tags["tuner.trial_number"]) for r in trials) == [t.number for t in finished]


def test_candidates_fail_with_the_reason_when_the_only_latency_node_is_lost(tmp_path, monkeypatch, mlflow_uri):
    from ray.cluster_utils import Cluster

    monkeypatch.chdir(tmp_path)
    budget = 6
    config = write_job(tmp_path, "lost-timer", budget, """
        latency: {threads: 1, warmup: 2, repeats: 10, resource: timing}
        pending_timeout_s: 5
        keep_artifacts: all   # the node goes once 3 models came back
    """)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    timer = cluster.add_node(num_cpus=0, resources={"timing": 1})  # times latency, builds nothing
    cluster.wait_for_nodes()
    artifacts = tmp_path / "tuner-runs" / "lost-timer" / "artifacts"
    try:
        with node_removed_mid_study(cluster, timer, artifacts, after=3) as removed:
            run_study(load_experiment(config), workers=2, address=cluster.address,
                      tracking_uri=mlflow_uri, progress=False)
    finally:
        cluster.shutdown()
    assert removed.is_set()
    study = load_finished_study("lost-timer")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == budget  # waits end: the study still completes its budget
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    assert complete and {t.user_attrs["environment"]["node_id"] for t in complete} == {timer.node_id}
    reasons = [t.user_attrs.get("fail_reason", "") for t in finished if t.state.name == "PRUNED"]
    assert reasons and all("latency not measured: no live node carries resource 'timing'" in r for r in reasons)


def test_a_driver_killed_with_sigkill_resumes_without_losing_or_duplicating_trials(tmp_path, mlflow_uri):
    """`tuner resume STUDY` after SIGKILL: completed trials kept, interrupted ones re-run, no MLflow duplicates."""
    budget = 8
    config = write_job(tmp_path, "killed", budget, "latency: {threads: 1, warmup: 2, repeats: 10}\n")
    uri = mlflow_uri
    cmd = [sys.executable, "-m", "tuner.cli", "run", str(config), "--workers", "1", "--tracking-uri", uri,
           "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    journal = tmp_path / "tuner-runs" / "killed" / "optuna.journal"
    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 240
    finished_at_kill = 0
    while time.time() < deadline and driver.poll() is None:
        if journal.is_file():
            study = load_finished_study("killed", tmp_path / "tuner-runs")
            finished_at_kill = len([t for t in study.trials if t.state.is_finished()])
            if finished_at_kill >= 3:
                break
        time.sleep(0.3)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, at once
    driver.wait()
    log.close()
    assert 3 <= finished_at_kill < budget, (tmp_path / "first.log").read_text()[-3000:]

    # by name alone: the study knows its experiment file and its MLflow store
    resume = [sys.executable, "-m", "tuner.cli", "resume", "killed", "--workers", "1", "--no-progress"]
    resumed = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # the trial in flight is re-run, or (killed between logging its result and telling Optuna) adopted from MLflow
    adopted = "recorded from MLflow" in resumed.stdout
    assert adopted or "interrupted; it will run again" in resumed.stdout
    study = load_finished_study("killed", tmp_path / "tuner-runs")
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert interrupted or adopted  # one worker: a trial was in flight when the driver died
    finished = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(finished) == budget  # completed trials kept, the budget met
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    for t in interrupted:  # each interrupted trial ran again, with the same choices
        assert any(o.number > t.number and o.params == t.params for o in finished)

    client = MlflowClient(uri)
    parents, trials = runs_by_role(client, "killed")
    live = [r for r in trials if r.info.status != "KILLED"]
    numbers = sorted(int(r.data.tags["tuner.trial_number"]) for r in live)
    assert numbers == sorted(t.number for t in finished)  # exactly one MLflow run per finished trial
    assert len(parents) == 1

    expected = front_from_values(study)  # what an uninterrupted run of these trials gives
    with open(tmp_path / "tuner-runs" / "killed" / "pareto.csv") as f:
        assert {int(row["trial"]) for row in csv.DictReader(f)} == expected
    assert {int(r.data.tags["tuner.trial_number"]) for r in live if r.data.tags["tuner.pareto"] == "true"} == expected


def test_ray_job_submit_runs_a_study_on_a_running_cluster_and_a_ray_client_continues_it(tmp_path, monkeypatch,
                                                                                          mlflow_uri):
    job_dir = tmp_path / "job"
    config = write_job(job_dir, "job", 3, "latency: {threads: 1, warmup: 2, repeats: 10}\n")
    port, dashboard, client_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_ADDRESS": "",
           "RAY_AUTH_MODE": "token"}  # the job client sends the token `ray start` wrote
    env.pop("RAY_ADDRESS")
    ray_cli = str(Path(sys.executable).parent / "ray")
    # --block: the cluster lives as long as this process, and stopping it stops this cluster only (`ray stop`
    # would stop every Ray on the machine, other tests' included)
    head_log = tmp_path / "ray-start.log"
    with head_log.open("w") as log:
        head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}",
                                 f"--dashboard-port={dashboard}", "--include-dashboard=true", "--num-cpus=2",
                                 "--disable-usage-stats", f"--ray-client-server-port={client_port}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in head_log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, head_log.read_text()[-3000:]
            time.sleep(0.5)
        uri = mlflow_uri
        deadline = time.monotonic() + 180  # the agent's own wait, counted from the head's start
        while True:  # the head says it started before its job agent is up (on a loaded machine, seconds later)
            job = subprocess.run(
                [ray_cli, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", f"--working-dir={job_dir}",
                 "--", "python", "-m", "tuner.cli", "run", config.name, "--address", "auto", "--workers", "1",
                 "--tracking-uri", uri, "--output-dir", str(tmp_path / "runs"), "--no-progress"],
                env=env, capture_output=True, text=True, timeout=400)
            if "No available agent to submit job" not in job.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        # beside that running cluster, a run given no address starts a Ray of its own instead of joining it
        monkeypatch.chdir(job_dir)
        local = RayExecutor(TaskRef("user_task.py:build"), EvalSettings(), tmp_path / "local", workers=1)
        try:
            assert ray.get_runtime_context().gcs_address.rsplit(":", 1)[1] != str(port)
        finally:
            local.close()
        # the same study, continued from this machine through Ray Client: two more trials
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        assert main(["run", config.name, "--address", f"ray://127.0.0.1:{client_port}", "--workers", "1",
                     "--trials", "5", "--tracking-uri", uri, "--output-dir", str(tmp_path / "runs"),
                     "--no-progress"]) == 0
    finally:
        head.terminate()
        head.wait(timeout=120)
    study = load_finished_study("job", tmp_path / "runs")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 5
    _, trials = runs_by_role(MlflowClient(uri), "job")
    assert sorted(int(r.data.tags["tuner.trial_number"]) for r in trials) == list(range(5))
    front = json.loads(json.dumps([t.number for t in study.best_trials]))
    assert all((tmp_path / "runs" / "job" / "artifacts" / study.trials[n].user_attrs["key"] / "model.onnx").is_file()
               for n in front)
