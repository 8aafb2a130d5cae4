"""The Ray actors of a study and the pools that keep them: build workers anywhere in the cluster, one latency
meter per machine, and a view of the cluster's live nodes that both consult.

The actors' module imports nothing heavy at the top: a new worker process answers ``ready()`` (placed) as soon
as it starts, and loads torch and ONNX Runtime in ``setup()``, so a slow start is not taken for a worker that
no node can place."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tuner.core.driver_lock import pid_alive
from tuner.core.errors import ClusterError
from tuner.core.paths import MODEL
from tuner.executors.base import LatencyFeeds
from tuner.experiment import EvalSettings
from tuner.taskref import TaskRef

SHIPPED_FILES = ("model.onnx", "candidate.json")  # what a worker sends back for each artifact


def _node() -> dict[str, str]:
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address()}


CLEANUP_TIMEOUT_S = 10.0


def remove_orphans(scratch_dir: Path) -> list[Path]:
    """Remove the folders that workers of this machine killed mid-build left in ``scratch_dir``: their own
    (``worker-<pid>-*``), their unfinished exports (``_exports/.<key>.<pid>.*``) and a killed latency meter's copy of
    the model it was timing (``meter-<pid>-*``), when that pid is gone."""
    removed = []
    for folder in [*scratch_dir.glob("worker-*-*"), *(scratch_dir / "_exports").glob(".*.*.*"),
                   *scratch_dir.glob("meter-*-*")]:
        parts = folder.name.split("-")[1] if folder.name.startswith(("worker-", "meter-")) else folder.name.split(".")[2]
        if parts.isdigit() and not pid_alive(int(parts)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Worker:
    """Builds and scores candidates. Created cheaply so that ``ready()`` tells placement apart from loading."""

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, scratch: str, path: str | None):
        self.args = (task_ref, settings, scratch, path)
        self.evaluator = None
        self.cores: set[int] | None = None
        self._frozen = False  # see release_memory(freeze=...)

    def ready(self) -> dict[str, str]:
        return _node()

    def setup(self) -> None:
        from tuner.evaluate import Evaluator
        from tuner.measure.cores import pin, split_cores
        from tuner.measure.latency import confine_default_ort_sessions

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
        scratch_dir = _mkdir(Path(tempfile.gettempdir()) / "tuner-scratch" / scratch)  # node-local
        remove_orphans(scratch_dir)  # what workers killed mid-build left on this machine
        # Artifacts are built in a folder of this worker's own (shipped, then removed), and so are the temporary
        # files of the libraries it calls (ORT's quantizer): a worker killed mid-build leaves them in one folder,
        # named by its pid. Pruned exports are cached for every worker of the machine.
        self.folder = Path(tempfile.mkdtemp(prefix=f"worker-{os.getpid()}-", dir=scratch_dir))
        tempfile.tempdir = str(_mkdir(self.folder / "tmp"))
        self.evaluator = Evaluator(task_ref, settings, self.folder, export_root=scratch_dir / "_exports")

    def cleanup(self) -> None:
        """Remove this worker's folder (the pool asks before it ends the worker)."""
        if getattr(self, "folder", None) is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def evaluate(self, candidate: dict[str, Any], fidelity: dict[str, Any] | None = None) -> dict[str, Any]:
        """``{"result": TrialResult, "files": {name: bytes}, "model": ObjectRef of model.onnx's bytes,
        "feeds": latency inputs}``. The model goes into the object store once, from here: the meter reads it
        from there and the driver fetches it once to write it, so no process holds two copies. An untimed
        ``fidelity`` ships the result alone."""
        from tuner.core.records import Fidelity
        from tuner.measure.cores import pin
        from tuner.measure.memory import release_memory

        pin(self.cores)
        start = time.perf_counter()
        fidelity = Fidelity.from_dict(fidelity)
        result = self.evaluator.build_and_score(candidate, fidelity)
        shipped: dict[str, Any] = {"files": {}, "feeds": None, "model": None}
        if result.completed and fidelity.timed and not result.screened_out:
            artifact = Path(result.artifact_dir)
            shipped["files"] = {name: (artifact / name).read_bytes() for name in SHIPPED_FILES}
            shipped["model"] = ray.put(shipped["files"].pop("model.onnx"))
            shipped["feeds"] = LatencyFeeds(self.evaluator.feeds(artifact / MODEL),
                                            self.evaluator.phase_feeds(artifact / MODEL))
        if result.artifact_dir:  # the driver keeps a completed model; a failed one is not kept anywhere
            shutil.rmtree(result.artifact_dir, ignore_errors=True)
        # the pruned copy, the ONNX graphs: back to the OS before the next candidate; what is left after the first
        # candidate is the worker's long-lived state, left out of later collections
        release_memory(freeze=not self._frozen)
        self._frozen = True
        shipped["result"] = result.with_timings(worker_total=time.perf_counter() - start)
        return shipped


class _LatencyMeter:
    """Times artifacts on this machine, one at a time (a sync actor runs one call at a time), pinned."""

    def __init__(self, settings: EvalSettings):
        from tuner.measure.cores import split_cores

        self.settings = settings
        cores = split_cores(settings.threads)
        self.cores = cores[0] if cores else None
        # a meter killed mid-timing (Ray's memory monitor) leaves its model here: the next one removes it
        scratch_dir = _mkdir(Path(tempfile.gettempdir()) / "tuner-scratch")
        remove_orphans(scratch_dir)
        self.dir = Path(tempfile.mkdtemp(prefix=f"meter-{os.getpid()}-", dir=scratch_dir))

    def ready(self) -> dict[str, str]:
        return _node()

    def measure(self, model: bytes, feeds: LatencyFeeds) -> dict[str, Any]:
        from tuner.evaluate import time_artifact
        from tuner.measure.cores import pin
        from tuner.measure.memory import peak_rss

        pin(self.cores)
        start = time.perf_counter()
        path = self.dir / MODEL
        path.write_bytes(model)
        memory: dict[str, float] = {}
        try:
            with peak_rss(memory, "meter"):
                latency, environment = time_artifact(path, feeds.main, self.settings, feeds.phases)
        finally:
            path.unlink(missing_ok=True)  # the driver keeps the artifact; a meter keeps no copies
        environment = {**environment, **_node(),
                       "pinned_cores": ",".join(map(str, sorted(self.cores))) if self.cores else "none"}
        return {"latency": latency, "environment": environment, "seconds": time.perf_counter() - start,
                "memory": memory}


class ClusterView:
    """The live nodes of the cluster (refreshed at most every 2 s) and those that may time latency."""

    def __init__(self, latency_resource: str | None):
        self.latency_resource = latency_resource
        self._nodes: list[dict[str, Any]] = []
        self._seen = 0.0

    def alive(self) -> list[dict[str, Any]]:
        if time.perf_counter() - self._seen > 2.0:
            self._nodes = [n for n in ray.nodes() if n.get("Alive")]
            self._seen = time.perf_counter()
        return self._nodes

    def refresh(self) -> None:
        self._seen = 0.0

    def latency_nodes(self) -> list[dict[str, Any]]:
        self.refresh()
        return [n for n in self.alive()
                if not self.latency_resource or n.get("Resources", {}).get(self.latency_resource, 0) > 0]

    def check_resource(self) -> None:
        if self.latency_resource and not self.latency_nodes():
            raise ClusterError(f"latency.resource {self.latency_resource!r}: no live node of the Ray cluster "
                               f"carries it; {self.describe()}. Start one with "
                               f"`ray start --resources '{{\"{self.latency_resource}\": 1}}'`.")

    def describe(self) -> str:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        parts = [f"{n['NodeManagerAddress']}: " + ", ".join(
            f"{k}={v:g}" for k, v in sorted(n.get("Resources", {}).items())
            if not k.startswith(("node:", "memory", "object_store_memory"))) for n in nodes]
        return f"{len(nodes)} live node(s) [" + "; ".join(parts) + "]"


class WorkerPool:
    """``size`` build workers: started, placed, loaded, handed out, replaced when they die or hang.

    Nothing waits forever: when every worker still waits for a placement after ``pending_timeout_s``, ``check``
    raises ClusterError naming what a worker needs and what each node has.
    """

    def __init__(self, make_actor: Callable[[], Any], size: int, pending_timeout_s: float, cluster: ClusterView):
        self._make_actor = make_actor
        self.pending_timeout_s = pending_timeout_s
        self.cluster = cluster
        self.actors: list[Any] = []
        self._placing: dict[ray.ObjectRef, tuple[Any, float]] = {}  # ready() ref -> (actor, created at)
        self._loading: dict[ray.ObjectRef, Any] = {}  # setup() ref -> actor
        self._where: dict[Any, dict[str, str]] = {}  # actor -> node it runs on
        self.free: list[Any] = []
        for _ in range(size):
            self.start()

    @property
    def starting(self) -> bool:
        return bool(self._loading)

    def start(self) -> None:
        actor = self._make_actor()
        self.actors.append(actor)
        self._placing[actor.ready.remote()] = (actor, time.perf_counter())
        self._loading[actor.setup.remote()] = actor

    def wait_for_first(self) -> None:
        while not self.free:
            self.poll(timeout=1.0)
            self.check(busy=False)

    def poll(self, timeout: float = 0.0) -> None:
        """Collect workers that were placed or finished loading."""
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
                if lost_node(exc):  # its node went away while it started: start one elsewhere
                    self.start()
                    continue
                cause = [line for line in str(exc).strip().splitlines() if line.strip()]
                raise ClusterError("a worker failed to start: " + " | ".join(cause[-3:])[:1500]) from None
            self.free.append(actor)

    def check(self, busy: bool) -> None:
        """Fail rather than wait forever when no worker can run: all of them wait for resources no node has."""
        if self.free or busy or not self._placing or len(self._placing) < len(self._loading):
            return
        waited = time.perf_counter() - min(created for _, created in self._placing.values())
        if waited > self.pending_timeout_s:
            raise ClusterError(f"no worker could be placed for {waited:.0f} s (pending_timeout_s): each needs "
                               f"1 CPU; {self.cluster.describe()}")

    def take(self) -> tuple[Any, dict[str, str]]:
        """A free worker and the node it runs on."""
        actor = self.free.pop()
        return actor, self._where.get(actor, {})

    def give_back(self, actor) -> None:
        self.free.append(actor)

    def replace(self, actor) -> None:
        """Kill ``actor`` (if it still lives) and start a fresh worker in its place."""
        ray.kill(actor, no_restart=True)
        self._forget(actor)
        self.start()

    def _forget(self, actor) -> None:
        for ref, (a, _) in list(self._placing.items()):
            if a is actor:
                del self._placing[ref]
        for ref, a in list(self._loading.items()):
            if a is actor:
                del self._loading[ref]
        if actor in self.actors:
            self.actors.remove(actor)
        self._where.pop(actor, None)

    def close(self) -> None:
        """End the workers, each after removing its folder (a worker busy or gone is ended regardless; the next
        worker started on its machine removes what it left)."""
        try:
            ray.get([actor.cleanup.remote() for actor in self.actors], timeout=CLEANUP_TIMEOUT_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            pass
        for actor in self.actors:
            ray.kill(actor)


class MeterPool:
    """One latency meter per machine (created on first use), each timing one artifact at a time.

    An artifact is timed on the machine it was built on, or, with ``latency.resource``, on the least busy
    machine carrying it.
    """

    def __init__(self, settings: EvalSettings, cluster: ClusterView):
        self.settings = settings
        self.cluster = cluster
        self._meter_class = ray.remote(num_cpus=0)(_LatencyMeter)
        self._meters: dict[str, Any] = {}  # host -> meter actor
        self._busy: dict[str, int] = {}

    def host_for(self, built_on: dict[str, str]) -> str | None:
        """The host whose meter times an artifact built on ``built_on``; None when none is alive now."""
        if self.cluster.latency_resource:
            candidates = self.cluster.latency_nodes()
        else:
            alive = self.cluster.alive()
            candidates = [n for n in alive if n["NodeID"] == built_on.get("node_id")] or alive
        hosts: dict[str, str] = {}
        for node in candidates:
            hosts.setdefault(node["NodeManagerAddress"], node["NodeID"])
        if not hosts:
            return None
        host = min(hosts, key=lambda h: (self._busy.get(h, 0), h != built_on.get("node_ip")))
        if host not in self._meters:  # one per machine, whichever of its Ray nodes is alive
            strategy = NodeAffinitySchedulingStrategy(hosts[host], soft=False)
            self._meters[host] = self._meter_class.options(scheduling_strategy=strategy).remote(self.settings)
        return host

    def measure(self, host: str, model: ray.ObjectRef, feeds: LatencyFeeds) -> ray.ObjectRef:
        self._busy[host] = self._busy.get(host, 0) + 1
        return self._meters[host].measure.remote(model, feeds)

    def done(self, host: str) -> None:
        self._busy[host] = max(0, self._busy.get(host, 1) - 1)

    def drop(self, host: str) -> None:
        """Forget (and kill) the meter of ``host``: its node died, or it hung."""
        meter = self._meters.pop(host, None)
        if meter is not None:
            ray.kill(meter, no_restart=True)
        self._busy.pop(host, None)
        self.cluster.refresh()

    def close(self) -> None:
        for meter in self._meters.values():
            ray.kill(meter)


def lost_node(exc: Exception) -> bool:
    text = str(exc).lower()
    return "node" in text and ("died" in text or "dead" in text)
