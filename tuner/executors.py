"""Run evaluations on Ray: builds and accuracy in parallel, latency one at a time per machine.

Each candidate goes through two stages. A ``_Worker`` actor (one per worker slot, anywhere in the cluster)
builds the artifact in node-local scratch space, scores it with the task's metric and sends the files back
through Ray. The driver writes them under the run directory (no shared filesystem is assumed) and hands the
model to a ``_LatencyMeter``: one actor per machine, on the cores the builds leave free, timing one
artifact at a time. With a resource label (``latency.resource``) only machines whose Ray node carries it
measure latency, so a study can build anywhere and time on the hardware it deploys to.

The driver submits plain candidate dicts and receives plain outcome dicts.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tuner.evaluate import EvalSettings, Evaluator, time_artifact
from tuner.measure.latency import confine_default_ort_sessions, pin, split_cores
from tuner.task import TaskRef

SHIPPED_FILES = ("model.onnx", "candidate.json")  # what a worker sends back for each artifact
# Never shipped to a cluster with the working directory: environments, run outputs, local MLflow stores.
WORKING_DIR_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "tuner-runs", "mlruns", "mlartifacts",
                        "mlflow.db", "*.onnx", ".pytest_cache"]


class ClusterError(RuntimeError):
    """The cluster cannot run the study as configured (missing resource, workers that cannot start)."""


def _node() -> dict[str, str]:
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address()}


class _Worker:
    """Builds and scores candidates. Created cheaply so that ``ready()`` tells placement apart from loading."""

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, scratch: str, path: str | None):
        self.args = (task_ref, settings, scratch, path)
        self.evaluator: Evaluator | None = None
        self.cores: set[int] | None = None

    def ready(self) -> dict[str, str]:
        return _node()

    def setup(self) -> None:
        task_ref, settings, scratch, path = self.args
        # `package.module:function` tasks import as they would in the driver's working directory.
        if path and path not in sys.path:
            sys.path.insert(0, path)
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.threads))
        cores = split_cores(settings.threads)
        self.cores = cores[1] if cores else None  # keep off the cores the latency meter times on
        pin(self.cores)
        confine_default_ort_sessions()
        import torch

        torch.set_num_threads(1)  # builds run one per worker; keep workers off each other's cores
        scratch_dir = Path(tempfile.gettempdir()) / "tuner-scratch" / scratch  # node-local
        # Artifacts are built in a folder of this worker's own (shipped, then removed); pruned exports are
        # cached for every worker of the machine.
        self.evaluator = Evaluator(task_ref, settings, tempfile.mkdtemp(prefix="worker-", dir=_mkdir(scratch_dir)),
                                   export_root=scratch_dir / "_exports")

    def evaluate(self, candidate: dict[str, Any]) -> dict[str, Any]:
        pin(self.cores)
        start = time.perf_counter()
        outcome = self.evaluator.build_and_score(candidate)
        result: dict[str, Any] = {"files": {}, "feeds": None}
        if outcome.state == "COMPLETE":
            artifact = Path(outcome.artifact_dir)
            result["files"] = {name: (artifact / name).read_bytes() for name in SHIPPED_FILES}
            result["feeds"] = self.evaluator.feeds(artifact / "model.onnx")
            shutil.rmtree(artifact, ignore_errors=True)  # the driver keeps it
        outcome.timings["worker_total"] = time.perf_counter() - start
        result["outcome"] = outcome.to_dict()
        return result


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class _LatencyMeter:
    """Times artifacts on this machine, one at a time (a sync actor runs one call at a time), pinned."""

    def __init__(self, settings: EvalSettings):
        self.settings = settings
        cores = split_cores(settings.threads)
        self.cores = cores[0] if cores else None
        self.dir = Path(tempfile.mkdtemp(prefix="tuner-latency-"))

    def ready(self) -> dict[str, str]:
        return _node()

    def measure(self, model: bytes, feeds: dict[str, Any]) -> dict[str, Any]:
        pin(self.cores)
        start = time.perf_counter()
        path = self.dir / "model.onnx"
        path.write_bytes(model)
        try:
            latency, environment = time_artifact(path, feeds, self.settings)
        finally:
            path.unlink(missing_ok=True)  # the driver keeps the artifact; a meter keeps no copies
        environment = {**environment, **_node(),
                       "pinned_cores": ",".join(map(str, sorted(self.cores))) if self.cores else "none"}
        return {"latency": latency, "environment": environment, "seconds": time.perf_counter() - start}


@dataclass
class _Job:
    token: Any
    candidate: dict[str, Any]
    submitted: float
    attempt: int = 0  # worker deaths so far
    actor: Any = None  # the worker building it
    outcome: dict[str, Any] | None = None  # after the build
    node: dict[str, str] = field(default_factory=dict)  # where it was built
    model: Any = None  # ObjectRef of the model bytes, for the meter
    feeds: dict[str, Any] | None = None
    meter_host: str | None = None
    meter_failures: int = 0
    queued: float = 0.0  # when it started waiting for a meter


class RayExecutor:
    """``workers`` evaluations at a time on a local Ray (default) or the cluster at ``address``.

    A worker that dies mid-candidate (process crash, lost node) is replaced and the candidate retried up to
    ``retries`` times, then reported FAIL with the reason. A candidate running longer than ``timeout_s`` is
    reported FAIL and its worker is killed and replaced (a hung evaluation cannot be interrupted otherwise).
    Nothing waits forever: workers that cannot be placed, or latency with no live node carrying
    ``latency_resource``, raise ``ClusterError`` / fail the candidate after ``pending_timeout_s``.
    """

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, artifact_root: str | Path, workers: int | None,
                 address: str | None = None, timeout_s: float | None = None, retries: int = 1,
                 latency_resource: str | None = None, pending_timeout_s: float = 120.0, scratch: str = "default"):
        if workers is not None and workers < 1:
            raise ValueError(f"`workers >= 1` must hold, but got {workers=}.")
        self.settings = settings
        self.artifact_root = Path(artifact_root)
        self.timeout_s = timeout_s
        self.retries = retries
        self.latency_resource = latency_resource
        self.pending_timeout_s = pending_timeout_s
        self._owns_ray = not ray.is_initialized()
        path: str | None = os.getcwd()
        if self._owns_ray:
            init_args: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                             log_to_driver=False)
            if address:
                task_ref, runtime_env = _ship(task_ref)
                if runtime_env:
                    init_args["runtime_env"] = runtime_env
                path = None  # the shipped working directory is the workers' cwd and on their path
                ray.init(address=address, **init_args)
            else:
                ray.init(num_cpus=max(workers or 1, os.cpu_count() or 1), **init_args)
        try:
            self._start(task_ref, settings, workers, scratch, path)
        except BaseException:
            self.shutdown()  # leave no Ray behind: the caller may start another study in this process
            raise

    def _start(self, task_ref: TaskRef, settings: EvalSettings, workers: int | None, scratch: str,
               path: str | None) -> None:
        self._meter_class = ray.remote(num_cpus=0)(_LatencyMeter)
        self._meters: dict[str, Any] = {}  # host -> meter actor
        self._meter_busy: dict[str, int] = {}
        self._nodes_seen = 0.0
        self._nodes: list[dict[str, Any]] = []
        self._actors: list[Any] = []
        self._placing: dict[ray.ObjectRef, tuple[Any, float]] = {}  # ready() ref -> (actor, created at)
        self._loading: dict[ray.ObjectRef, Any] = {}  # setup() ref -> actor
        self._where: dict[Any, dict[str, str]] = {}  # actor -> node it runs on
        self._idle: list[Any] = []
        self._building: dict[ray.ObjectRef, _Job] = {}
        self._timing: dict[ray.ObjectRef, _Job] = {}
        self._queued: list[_Job] = []  # built, waiting for a meter
        self._check_resource()
        if workers is None:  # every CPU of the cluster, less the cores each machine keeps for latency
            hosts = {n["NodeManagerAddress"] for n in self._latency_nodes()}
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) - settings.threads * len(hosts))
        self.workers = workers
        worker_class = ray.remote(num_cpus=1)(_Worker)
        args = (task_ref, settings, scratch, path)
        self._new_actor = lambda: worker_class.remote(*args)
        for _ in range(workers):
            self._start_actor()
        self._await_first_worker()

    # -- workers ------------------------------------------------------------------------------------------
    def _start_actor(self) -> None:
        actor = self._new_actor()
        self._actors.append(actor)
        now = time.perf_counter()
        self._placing[actor.ready.remote()] = (actor, now)
        self._loading[actor.setup.remote()] = actor

    def _await_first_worker(self) -> None:
        while not self._idle:
            self._poll_starting(timeout=1.0)
            self._check_placement()

    def _check_placement(self) -> None:
        """Fail rather than wait forever when no worker can run: all of them wait for resources no node has."""
        if self._idle or self._building or not self._placing or len(self._placing) < len(self._loading):
            return
        waited = time.perf_counter() - min(created for _, created in self._placing.values())
        if waited > self.pending_timeout_s:
            raise ClusterError(f"no worker could be placed for {waited:.0f} s (pending_timeout_s): each needs "
                               f"1 CPU; {self._describe_cluster()}")

    def _poll_starting(self, timeout: float = 0.0) -> None:
        refs = [*self._placing, *self._loading]
        if not refs:
            return
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if done:  # and whatever else is ready too
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            if ref in self._placing:
                actor, _ = self._placing.pop(ref)
                try:
                    self._where[actor] = ray.get(ref)
                except ray.exceptions.RayError:
                    pass  # reported through its setup() below
                continue
            actor = self._loading.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                self._forget(actor)
                if _lost_node(exc):  # its node went away while it started: start one elsewhere
                    self._start_actor()
                    continue
                cause = [line for line in str(exc).strip().splitlines() if line.strip()]
                raise ClusterError("a worker failed to start: " + " | ".join(cause[-3:])[:1500]) from None
            self._idle.append(actor)

    def _forget(self, actor) -> None:
        for ref, (a, _) in list(self._placing.items()):
            if a is actor:
                del self._placing[ref]
        for ref, a in list(self._loading.items()):
            if a is actor:
                del self._loading[ref]
        if actor in self._actors:
            self._actors.remove(actor)
        self._where.pop(actor, None)

    @property
    def idle(self) -> int:
        """Workers free for a new candidate (retries waiting for a worker come first)."""
        return max(0, len(self._idle) - sum(1 for job in self._queued if job.outcome is None))

    @property
    def busy(self) -> int:
        return len(self._building) + len(self._timing) + len(self._queued)

    def submit(self, token: Any, candidate: dict[str, Any]) -> None:
        self._build(_Job(token, candidate, time.perf_counter()))

    def _build(self, job: _Job) -> None:
        job.actor = self._idle.pop()
        job.node = self._where.get(job.actor, {})
        self._building[job.actor.evaluate.remote(job.candidate)] = job

    def _replace(self, actor) -> None:
        """Kill ``actor`` (if it still lives) and start a fresh worker in its place."""
        ray.kill(actor, no_restart=True)
        self._forget(actor)
        self._start_actor()

    # -- latency meters -----------------------------------------------------------------------------------
    def _check_resource(self) -> None:
        if self.latency_resource and not self._latency_nodes():
            raise ClusterError(f"latency.resource {self.latency_resource!r}: no live node of the Ray cluster "
                               f"carries it; {self._describe_cluster()}. Start one with "
                               f"`ray start --resources '{{\"{self.latency_resource}\": 1}}'`.")

    def _alive_nodes(self) -> list[dict[str, Any]]:
        if time.perf_counter() - self._nodes_seen > 2.0:
            self._nodes = [n for n in ray.nodes() if n.get("Alive")]
            self._nodes_seen = time.perf_counter()
        return self._nodes

    def _latency_nodes(self) -> list[dict[str, Any]]:
        self._nodes_seen = 0.0
        return [n for n in self._alive_nodes()
                if not self.latency_resource or n.get("Resources", {}).get(self.latency_resource, 0) > 0]

    def _describe_cluster(self) -> str:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        parts = [f"{n['NodeManagerAddress']}: " + ", ".join(
            f"{k}={v:g}" for k, v in sorted(n.get("Resources", {}).items())
            if not k.startswith(("node:", "memory", "object_store_memory"))) for n in nodes]
        return f"{len(nodes)} live node(s) [" + "; ".join(parts) + "]"

    def _meter_for(self, job: _Job) -> str | None:
        """The host whose meter times ``job``: the machine it was built on, or with a resource label the least
        busy machine carrying it. None when no such machine is alive right now."""
        candidates = self._latency_nodes() if self.latency_resource else [
            n for n in self._alive_nodes() if n["NodeID"] == job.node.get("node_id")] or self._alive_nodes()
        hosts: dict[str, str] = {}
        for node in candidates:
            hosts.setdefault(node["NodeManagerAddress"], node["NodeID"])
        if not hosts:
            return None
        host = min(hosts, key=lambda h: (self._meter_busy.get(h, 0), h != job.node.get("node_ip")))
        if host not in self._meters:  # one per machine, whichever of its Ray nodes is alive
            strategy = NodeAffinitySchedulingStrategy(hosts[host], soft=False)
            self._meters[host] = self._meter_class.options(scheduling_strategy=strategy).remote(self.settings)
        return host

    def _time(self, job: _Job, into: dict | None = None) -> bool:
        """Hand ``job``'s artifact to a meter (tracked in ``into``, default: the study's timings); False when
        no machine can time it right now."""
        host = self._meter_for(job)
        if host is None:
            return False
        job.meter_host = host
        self._meter_busy[host] = self._meter_busy.get(host, 0) + 1
        job.queued = job.queued or time.perf_counter()
        ref = self._meters[host].measure.remote(job.model, job.feeds)
        (self._timing if into is None else into)[ref] = job
        return True

    def _drop_meter(self, host: str) -> None:
        meter = self._meters.pop(host, None)
        if meter is not None:
            ray.kill(meter, no_restart=True)
        self._meter_busy.pop(host, None)
        self._nodes_seen = 0.0

    # -- results ------------------------------------------------------------------------------------------
    def results(self, timeout: float = 1.0) -> list[tuple[Any, dict[str, Any]]]:
        """Finished evaluations as ``(token, outcome)``; waits at most ``timeout`` seconds for the first."""
        finished: list[tuple[Any, dict[str, Any]]] = []
        self._poll_starting()
        self._dispatch_queued(finished)
        refs = list(self._building) + list(self._timing)
        if refs:
            if self.timeout_s is not None:  # wake up in time to notice a candidate that overran
                oldest = min(job.submitted for job in (*self._building.values(), *self._timing.values()))
                timeout = max(0.0, min(timeout, oldest + self.timeout_s - time.perf_counter() + 0.05))
            if self._queued or self._loading:
                timeout = min(timeout, 0.5)
            done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            if done:  # collect everything else that is already finished too
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in done:
                if ref in self._building:
                    self._built(ref, self._building.pop(ref), finished)
                else:
                    self._timed(ref, self._timing.pop(ref), finished)
        elif self._queued or self._loading:
            self._poll_starting(timeout=min(timeout, 0.5))
        self._check_placement()
        self._expire(finished)
        return finished

    def _built(self, ref, job: _Job, finished: list) -> None:
        try:
            result = ray.get(ref)
            self._idle.append(job.actor)
        except ray.exceptions.RayError as exc:  # the worker process or its node died mid-candidate
            self._replace(job.actor)
            if job.attempt < self.retries:
                job.attempt += 1
                self._retry(job)
                return
            finished.append((job.token, _failed(job, f"worker died {job.attempt + 1} time(s) on this candidate: "
                                                     f"{type(exc).__name__}: {_first_line(exc)}")))
            return
        outcome = result["outcome"]
        outcome["worker_deaths"] = job.attempt  # retried after losing its worker this many times
        if outcome["state"] != "COMPLETE":
            outcome["timings"]["wall"] = time.perf_counter() - job.submitted
            finished.append((job.token, outcome))
            return
        directory = self.artifact_root / outcome["key"]  # the files came back through Ray
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in result["files"].items():
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, directory / name)
        outcome["artifact_dir"] = str(directory)
        job.outcome, job.feeds = outcome, result["feeds"]
        job.model = ray.put(result["files"]["model.onnx"])
        job.queued = time.perf_counter()
        if not self._time(job):
            self._queued.append(job)

    def _retry(self, job: _Job) -> None:
        """Run ``job`` again as soon as a worker is free (before any new candidate)."""
        if self._idle:
            self._build(job)
        else:
            self._queued.append(job)  # picked up by _dispatch_queued once a worker is ready

    def _timed(self, ref, job: _Job, finished: list) -> None:
        self._meter_busy[job.meter_host] = max(0, self._meter_busy.get(job.meter_host, 1) - 1)
        try:
            measured = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the meter's node died: time it on another machine
            self._drop_meter(job.meter_host)
            job.meter_failures += 1
            if job.meter_failures <= self.retries + 1 and self._time(job):
                return
            if job.meter_failures <= self.retries + 1:
                self._queued.append(job)
                return
            finished.append((job.token, _failed(job, f"latency failed {job.meter_failures} time(s): "
                                                     f"{type(exc).__name__}: {_first_line(exc)}")))
            return
        outcome = job.outcome
        outcome["latency"] = measured["latency"]
        outcome["environment"] = {**measured["environment"], "build_node_ip": job.node.get("node_ip", "")}
        outcome["timings"]["latency"] = measured["seconds"]
        outcome["timings"]["latency_wait"] = max(0.0, time.perf_counter() - job.queued - measured["seconds"])
        outcome["timings"]["wall"] = time.perf_counter() - job.submitted
        finished.append((job.token, outcome))

    def _dispatch_queued(self, finished: list) -> None:
        still = []
        for job in self._queued:
            if job.outcome is None:  # a retry waiting for a worker
                if self._idle:
                    self._build(job)
                else:
                    still.append(job)
            elif not self._time(job):
                waited = time.perf_counter() - job.queued
                if waited > self.pending_timeout_s:
                    where = (f"no live node carries resource {self.latency_resource!r}" if self.latency_resource
                             else "no live node")
                    finished.append((job.token, _failed(job, f"latency not measured: {where} (waited "
                                                             f"{waited:.0f} s, pending_timeout_s)")))
                else:
                    still.append(job)
        self._queued = still

    def _expire(self, finished: list) -> None:
        if self.timeout_s is None:
            return
        now = time.perf_counter()
        stages = ((self._building, lambda job: self._replace(job.actor), "its worker was replaced"),
                  (self._timing, lambda job: self._drop_meter(job.meter_host), "while timing; meter replaced"))
        for running, stop, what in stages:
            for ref, job in list(running.items()):
                if now - job.submitted > self.timeout_s:
                    del running[ref]
                    stop(job)  # a hung call cannot be interrupted: its actor goes
                    finished.append((job.token, _failed(job, f"timed out after {self.timeout_s:g} s "
                                                             f"(candidate_timeout_s); {what}")))

    def retime(self, artifacts: list[tuple[Any, Path, dict[str, str]]], feeds: dict[str, Any]
               ) -> dict[Any, dict[str, float]]:
        """Time finished artifacts again, each on the machine that timed it during the study (or any live
        one that may): ``(token, model path, recorded environment)`` -> latency. For a quiet re-check once no
        build is running; artifacts whose meter is lost or that take longer than ``pending_timeout_s`` are
        left out."""
        pending: dict[ray.ObjectRef, _Job] = {}
        for token, path, environment in artifacts:
            job = _Job(token, {}, time.perf_counter(), feeds=feeds, model=ray.put(Path(path).read_bytes()),
                       node={k: environment.get(k, "") for k in ("node_id", "node_ip")})
            self._time(job, into=pending)
        measured = {}
        deadline = time.perf_counter() + self.pending_timeout_s
        while pending and time.perf_counter() < deadline:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
            for ref in done:
                job = pending.pop(ref)
                self._meter_busy[job.meter_host] = max(0, self._meter_busy.get(job.meter_host, 1) - 1)
                try:
                    measured[job.token] = ray.get(ref)["latency"]
                except ray.exceptions.RayError:
                    self._drop_meter(job.meter_host)
        return measured

    def shutdown(self) -> None:
        for actor in [*getattr(self, "_actors", []), *getattr(self, "_meters", {}).values()]:
            ray.kill(actor)
        if self._owns_ray:
            ray.shutdown()


def _failed(job: _Job, reason: str) -> dict[str, Any]:
    outcome = dict(job.outcome or {"timings": {}, "latency": {}})
    outcome.update(state="FAIL", error=reason, latency={})
    outcome["timings"] = {**outcome.get("timings", {}), "wall": time.perf_counter() - job.submitted}
    return outcome


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _lost_node(exc: Exception) -> bool:
    text = str(exc)
    return "node" in text.lower() and ("died" in text.lower() or "dead" in text.lower())


def _ship(task_ref: TaskRef) -> tuple[TaskRef, dict[str, Any] | None]:
    """The runtime environment that brings the working directory and `tuner` itself to the cluster's
    workers, and the task reference rewritten to resolve there. Inside a `ray job submit` job the job's
    own runtime environment already does this."""
    cwd = Path.cwd().resolve()
    base = Path(task_ref.base_dir).resolve()
    if not base.is_relative_to(cwd):
        raise ClusterError(f"the experiment's folder {base} is outside the working directory {cwd}, which is "
                           "what Ray ships to the cluster's workers; run `tuner` from a folder that contains it.")
    shipped = TaskRef(task_ref.spec, task_ref.args, str(base.relative_to(cwd)) or ".")
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return shipped, None
    import tuner

    return shipped, {"working_dir": str(cwd), "py_modules": [str(Path(tuner.__file__).parent)],
                     "excludes": WORKING_DIR_EXCLUDES}
