"""Run evaluations on Ray: builds and accuracy in parallel, latency one at a time per machine.

Each candidate goes through the two stages of :class:`~tuner.executors.base.Stage`. A build worker (one per
worker slot, anywhere in the cluster; :class:`~tuner.executors.ray_pools.WorkerPool`) builds the artifact in
node-local scratch space, scores it with the task's metric and sends the files back through Ray. The driver
writes them under the run directory (no shared filesystem is assumed) and hands the model to a latency meter
(:class:`~tuner.executors.ray_pools.MeterPool`): one actor per machine, on the cores the builds leave free,
timing one artifact at a time. With a resource label (``latency.resource``) only machines whose Ray node
carries it measure latency, so a study can build anywhere and time on the hardware it deploys to.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray

from tuner.core.candidate import Candidate
from tuner.core.errors import ClusterError
from tuner.core.paths import MODEL
from tuner.core.records import FULL, Fidelity, LatencyStats, TrialResult
from tuner.executors.base import Executor, LatencyFeeds, Retime, Stage
from tuner.executors.ray_pools import ClusterView, MeterPool, WorkerPool, _Worker
from tuner.experiment import EvalSettings
from tuner.taskref import TaskRef

# Never shipped to a cluster with the working directory: environments, run outputs, local MLflow stores.
WORKING_DIR_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "tuner-runs", "mlruns", "mlartifacts",
                        "mlflow.db", "*.onnx", ".pytest_cache"]


@dataclass
class _Job:
    token: Any
    candidate: dict[str, Any]
    submitted: float
    fidelity: Fidelity = FULL
    started: float = 0.0  # when its current stage began on a worker or meter (a retry starts anew)
    stage: Stage = Stage.BUILD
    attempt: int = 0  # worker deaths so far
    actor: Any = None  # the worker building it
    node: dict[str, str] = field(default_factory=dict)  # where it was built
    result: TrialResult | None = None  # after the build
    model: Any = None  # ObjectRef of the model bytes, for the meter
    feeds: LatencyFeeds | None = None
    meter_host: str | None = None
    meter_failures: int = 0
    queued: float = 0.0  # when it started waiting for a meter

    def failed(self, reason: str) -> TrialResult:
        result = self.result or TrialResult(key="", candidate=self.candidate)
        return replace(result.failed(reason), worker_deaths=self.attempt).with_timings(
            wall=time.perf_counter() - self.submitted)


class RayExecutor(Executor):
    """``workers`` evaluations at a time on a local Ray (default) or the cluster at ``address``.

    A worker that dies mid-candidate (process crash, lost node) is replaced and the candidate retried up to
    ``retries`` times, then reported FAIL with the reason. A candidate whose build (or timing) runs longer than
    ``timeout_s`` is reported FAIL and its worker (or meter) is killed and replaced (a hung evaluation cannot be
    interrupted otherwise).
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
        self.pending_timeout_s = pending_timeout_s
        self._running: dict[ray.ObjectRef, _Job] = {}  # being built, or being timed
        self._waiting: list[_Job] = []  # retries waiting for a worker, built artifacts waiting for a meter
        self._pool: WorkerPool | None = None
        self._meters: MeterPool | None = None
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
                connect(address, init_args)
            else:  # "local": a Ray of its own, even where `ray start` left a cluster that ray.init() would join
                _quiet_default_token_auth()
                ray.init(address="local", num_cpus=max(workers or 1, os.cpu_count() or 1), **init_args)
        try:
            cluster = ClusterView(latency_resource)
            cluster.check_resource()
            if workers is None:  # every CPU of the cluster, less the cores each machine keeps for latency
                hosts = {n["NodeManagerAddress"] for n in cluster.latency_nodes()}
                workers = max(1, int(ray.cluster_resources().get("CPU", 1)) - settings.threads * len(hosts))
            self.size = workers
            worker_class = ray.remote(num_cpus=1)(_Worker)
            args = (task_ref, settings, scratch, path)
            self._meters = MeterPool(settings, cluster)
            self._pool = WorkerPool(lambda: worker_class.remote(*args), workers, pending_timeout_s, cluster)
            self._pool.wait_for_first()
        except BaseException:
            self.close()  # leave no Ray behind: the caller may start another study in this process
            raise

    @property
    def idle(self) -> int:
        """Workers free for a new candidate (retries waiting for a worker come first)."""
        return max(0, len(self._pool.free) - sum(1 for job in self._waiting if job.stage is Stage.BUILD))

    def submit(self, token: Hashable, candidate: Candidate, fidelity: Fidelity = FULL) -> None:
        self._build(_Job(token, candidate.to_dict(), time.perf_counter(), fidelity))

    def _build(self, job: _Job) -> None:
        job.actor, job.node = self._pool.take()
        job.started = time.perf_counter()
        self._running[job.actor.evaluate.remote(job.candidate, job.fidelity.to_dict())] = job

    def _time(self, job: _Job, into: dict | None = None) -> bool:
        """Hand ``job``'s artifact to a meter (tracked in ``into``, default: the running jobs); False when no
        machine can time it right now."""
        host = self._meters.host_for(job.node)
        if host is None:
            return False
        job.stage, job.meter_host = Stage.TIMING, host
        job.queued = job.queued or time.perf_counter()
        job.started = time.perf_counter()
        (self._running if into is None else into)[self._meters.measure(host, job.model, job.feeds)] = job
        return True

    def results(self, timeout: float = 1.0) -> list[tuple[Hashable, TrialResult]]:
        """Finished evaluations as ``(token, result)``; waits at most ``timeout`` seconds for the first."""
        finished: list[tuple[Hashable, TrialResult]] = []
        self._pool.poll()
        self._dispatch_waiting(finished)
        if self._running:
            if self.timeout_s is not None:  # wake up in time to notice a candidate that overran
                oldest = min(job.started for job in self._running.values())
                timeout = max(0.0, min(timeout, oldest + self.timeout_s - time.perf_counter() + 0.05))
            if self._waiting or self._pool.starting:
                timeout = min(timeout, 0.5)
            refs = list(self._running)
            done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            if done:  # collect everything else that is already finished too
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in done:
                job = self._running.pop(ref)
                (self._built if job.stage is Stage.BUILD else self._timed)(ref, job, finished)
        elif self._waiting or self._pool.starting:
            self._pool.poll(timeout=min(timeout, 0.5))
        self._pool.check(busy=any(job.stage is Stage.BUILD for job in self._running.values()))
        self._expire(finished)
        return finished

    def _built(self, ref, job: _Job, finished: list) -> None:
        try:
            shipped = ray.get(ref)
            result = shipped["result"]
            timed = result.completed and job.fidelity.timed and not result.screened_out
            # The model is an object of the worker's: a node lost after the build but before this fetch takes
            # it along (OwnerDiedError), which is a worker death like any other. The only copy this process
            # holds, written and dropped below.
            model = ray.get(shipped["model"]) if timed else None
            self._pool.give_back(job.actor)
        except ray.exceptions.RayError as exc:  # the worker process or its node died mid-candidate
            self._pool.replace(job.actor)
            if job.attempt < self.retries:
                job.attempt += 1
                self._retry(job)
                return
            finished.append((job.token, job.failed(f"worker died {job.attempt + 1} time(s) on this candidate: "
                                                   f"{type(exc).__name__}: {_first_line(exc)}")))
            return
        result = replace(result, worker_deaths=job.attempt)  # retried after losing its worker
        if not timed:  # nothing to write or time
            finished.append((job.token, result.with_timings(wall=time.perf_counter() - job.submitted)))
            return
        directory = self.artifact_root / result.key  # the files came back through Ray
        directory.mkdir(parents=True, exist_ok=True)
        files = dict(shipped["files"])
        files["model.onnx"] = model
        del model
        for name, data in files.items():
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, directory / name)
        del files, data
        job.result, job.feeds = replace(result, artifact_dir=str(directory)), shipped["feeds"]
        job.model = shipped["model"]  # the meter reads it from the object store
        job.stage, job.queued = Stage.TIMING, time.perf_counter()
        if not self._time(job):
            self._waiting.append(job)

    def _retry(self, job: _Job) -> None:
        """Run ``job`` again as soon as a worker is free (before any new candidate)."""
        if self._pool.free:
            self._build(job)
        else:
            self._waiting.append(job)  # picked up by _dispatch_waiting once a worker is ready

    def _timed(self, ref, job: _Job, finished: list) -> None:
        self._meters.done(job.meter_host)
        try:
            measured = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the meter's node died: time it on another machine
            self._meters.drop(job.meter_host)
            job.meter_failures += 1
            if job.meter_failures <= self.retries + 1:
                # The model's object belongs to the worker that built it; if that worker's node went too, it is
                # gone: put it again from the copy the driver wrote.
                directory = job.result.artifact_dir if job.result is not None else None
                if directory and (Path(directory) / MODEL).is_file():
                    job.model = ray.put((Path(directory) / MODEL).read_bytes())
                if not self._time(job):
                    self._waiting.append(job)
                return
            finished.append((job.token, job.failed(f"latency failed {job.meter_failures} time(s): "
                                                   f"{type(exc).__name__}: {_first_line(exc)}")))
            return
        now = time.perf_counter()
        result = replace(job.result, latency=measured["latency"],
                         environment={**measured["environment"], "build_node_ip": job.node.get("node_ip", "")},
                         memory={**job.result.memory, **measured.get("memory", {})})
        finished.append((job.token, result.with_timings(
            latency=measured["seconds"], latency_wait=max(0.0, now - job.queued - measured["seconds"]),
            wall=now - job.submitted)))

    def _dispatch_waiting(self, finished: list) -> None:
        still = []
        for job in self._waiting:
            if job.stage is Stage.BUILD:  # a retry waiting for a worker
                if self._pool.free:
                    self._build(job)
                else:
                    still.append(job)
            elif not self._time(job):
                waited = time.perf_counter() - job.queued
                if waited > self.pending_timeout_s:
                    resource = self._meters.cluster.latency_resource
                    where = f"no live node carries resource {resource!r}" if resource else "no live node"
                    finished.append((job.token, job.failed(f"latency not measured: {where} (waited {waited:.0f} s, "
                                                           "pending_timeout_s)")))
                else:
                    still.append(job)
        self._waiting = still

    def _expire(self, finished: list) -> None:
        if self.timeout_s is None:
            return
        now = time.perf_counter()
        for ref, job in list(self._running.items()):
            if now - job.started <= self.timeout_s:
                continue
            del self._running[ref]
            if job.stage is Stage.BUILD:  # a hung call cannot be interrupted: its actor goes
                self._pool.replace(job.actor)
                what = "its worker was replaced"
            else:
                self._meters.drop(job.meter_host)
                what = "while timing; meter replaced"
            finished.append((job.token, job.failed(f"timed out after {self.timeout_s:g} s (candidate_timeout_s); "
                                                   f"{what}")))

    def retime(self, artifacts: Sequence[Retime], feeds: Mapping[str, Any]) -> dict[Hashable, LatencyStats]:
        """Time finished artifacts again, each on the machine that timed it during the study (or any live one
        that may). Artifacts whose meter is lost or that take longer than ``pending_timeout_s`` are left out."""
        pending: dict[ray.ObjectRef, _Job] = {}
        for artifact in artifacts:
            job = _Job(artifact.token, {}, time.perf_counter(), stage=Stage.TIMING, feeds=LatencyFeeds(dict(feeds)),
                       model=ray.put(Path(artifact.model_path).read_bytes()),
                       node={k: str(artifact.environment.get(k, "")) for k in ("node_id", "node_ip")})
            self._time(job, into=pending)
        measured = {}
        deadline = time.perf_counter() + self.pending_timeout_s
        while pending and time.perf_counter() < deadline:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
            for ref in done:
                job = pending.pop(ref)
                self._meters.done(job.meter_host)
                try:
                    measured[job.token] = ray.get(ref)["latency"]
                except ray.exceptions.RayError:
                    self._meters.drop(job.meter_host)
        return measured

    def close(self) -> None:
        for pool in (self._pool, self._meters):
            if pool is not None:
                pool.close()
        self._pool = self._meters = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()


# Ray Client's proxy forks a server process per client, which at times dies at once (a gRPC race at fork,
# ray-project/ray#63202, about 7% of connections there): the connection is made again.
CLIENT_SERVER_FAILED = "Starting Ray client server failed"
CONNECT_ATTEMPTS = 3


def connect(address: str, init_args: Mapping[str, Any], attempts: int = CONNECT_ATTEMPTS) -> None:
    """``ray.init(address, **init_args)``; a Ray Client connection whose server process failed to start is tried
    again, up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, **init_args)
            return
        except (RuntimeError, ConnectionError) as exc:
            if CLIENT_SERVER_FAILED not in str(exc) or attempt == attempts:
                raise
            logging.getLogger("tuner").warning("Ray Client: the cluster's server for this client failed to start "
                                               "(ray-project/ray#63202); connecting again (%d/%d)",
                                               attempt + 1, attempts)
            ray.shutdown()
            time.sleep(1.0)


def _first_line(exc: Exception) -> str:
    """The error's first line; for a process Ray's memory monitor killed, also why (its first line says only that
    the actor or worker died)."""
    text = str(exc)
    line = (text.strip().splitlines() or [""])[0][:300]
    if any(words in text.lower() for words in ("low on memory", "memory on the node", "outofmemory")):
        line += (" (killed by Ray's memory monitor: the machine ran low on memory; run fewer workers or on a "
                 "machine with more memory)")
    return line


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


class _DropTokenAuthNotice(logging.Filter):
    """Ray enables token authentication on a new local cluster and warns that it did, on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _quiet_default_token_auth() -> None:
    """Keep Ray's default (token authentication on a local cluster) without its notice on every run. Setting
    RAY_AUTH_MODE ourselves would not do: Ray caches its config at import and refreshes it only when it enables
    the mode itself, so a driver set up that way fails its own GCS's authentication."""
    auth_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropTokenAuthNotice) for f in auth_logger.filters):
        auth_logger.addFilter(_DropTokenAuthNotice())
