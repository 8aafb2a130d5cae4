"""Run evaluations in parallel on Ray: one actor per worker, each holding the loaded task.

The driver submits plain candidate dicts and receives plain outcome dicts; nothing else crosses.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray

from tuner.evaluate import EvalSettings, Evaluator
from tuner.task import TaskRef


class _Worker:
    def __init__(self, task_ref: TaskRef, settings: EvalSettings, artifact_root: str, cwd: str):
        # `package.module:function` tasks import as they would in the driver's working directory.
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.threads))
        import torch

        torch.set_num_threads(1)  # builds run one per worker; keep workers off each other's cores
        self.evaluator = Evaluator(task_ref, settings, artifact_root)

    def evaluate(self, candidate: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        outcome = self.evaluator.evaluate(candidate).to_dict()
        outcome["timings"]["worker_total"] = time.perf_counter() - start
        return outcome


class RayExecutor:
    """``workers`` evaluations at a time on a local Ray (default) or the cluster at ``address``.

    A worker that dies mid-candidate (process crash, lost node) is replaced and the candidate retried up to
    ``retries`` times, then reported FAIL with the reason. A candidate running longer than ``timeout_s`` is
    reported FAIL and its worker is killed and replaced (a hung evaluation cannot be interrupted otherwise).
    """

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, artifact_root: str | Path, workers: int,
                 address: str | None = None, timeout_s: float | None = None, retries: int = 1):
        if workers < 1:
            raise ValueError(f"`workers >= 1` must hold, but got {workers=}.")
        self.timeout_s = timeout_s
        self.retries = retries
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            init_args: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                             log_to_driver=False)
            if address:
                ray.init(address=address, **init_args)
            else:
                ray.init(num_cpus=max(workers, os.cpu_count() or 1), **init_args)
        actor = ray.remote(num_cpus=1)(_Worker)
        args = (task_ref, settings, str(Path(artifact_root).resolve()), os.getcwd())
        self._new_actor = lambda: actor.remote(*args)
        self._actors = [self._new_actor() for _ in range(workers)]
        self._idle = list(self._actors)
        # ref -> (token, actor, submitted at, candidate, attempt)
        self._running: dict[ray.ObjectRef, tuple[Any, Any, float, dict[str, Any], int]] = {}

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return len(self._running)

    def submit(self, token: Any, candidate: dict[str, Any], attempt: int = 0, submitted: float | None = None) -> None:
        actor = self._idle.pop()
        ref = actor.evaluate.remote(candidate)
        self._running[ref] = (token, actor, submitted or time.perf_counter(), candidate, attempt)

    def _replace(self, actor) -> None:
        """Kill ``actor`` (if it still lives) and put a fresh worker in its place."""
        ray.kill(actor, no_restart=True)
        fresh = self._new_actor()
        self._actors[self._actors.index(actor)] = fresh
        self._idle.append(fresh)

    def results(self, timeout: float = 1.0) -> list[tuple[Any, dict[str, Any]]]:
        """Finished evaluations as ``(token, outcome)``; waits at most ``timeout`` seconds for the first."""
        if not self._running:
            return []
        if self.timeout_s is not None:  # wake up in time to notice a candidate that overran
            oldest = min(submitted for _, _, submitted, _, _ in self._running.values())
            timeout = max(0.0, min(timeout, oldest + self.timeout_s - time.perf_counter() + 0.05))
        done, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if done:  # collect everything else that is already finished too
            done, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        finished = []
        for ref in done:
            token, actor, submitted, candidate, attempt = self._running.pop(ref)
            try:
                outcome = ray.get(ref)
                self._idle.append(actor)
            except ray.exceptions.RayError as exc:  # the worker process or its node died mid-candidate
                self._replace(actor)
                if attempt < self.retries:
                    self.submit(token, candidate, attempt + 1, submitted)
                    continue
                outcome = {"state": "FAIL", "timings": {}, "latency": {},
                           "error": f"worker died {attempt + 1} time(s) on this candidate: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:300]}"}
            outcome["timings"]["wall"] = time.perf_counter() - submitted
            finished.append((token, outcome))
        if self.timeout_s is not None:
            now = time.perf_counter()
            for ref, (token, actor, submitted, candidate, attempt) in list(self._running.items()):
                if now - submitted > self.timeout_s:
                    del self._running[ref]
                    self._replace(actor)
                    finished.append((token, {"state": "FAIL", "timings": {"wall": now - submitted}, "latency": {},
                                             "error": f"timed out after {self.timeout_s:g} s (candidate_timeout_s); "
                                                      "its worker was replaced"}))
        return finished

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        if self._owns_ray:
            ray.shutdown()
