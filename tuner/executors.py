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
    """``workers`` evaluations at a time on a local Ray (default) or the cluster at ``address``."""

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, artifact_root: str | Path, workers: int,
                 address: str | None = None):
        if workers < 1:
            raise ValueError(f"`workers >= 1` must hold, but got {workers=}.")
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            init_args: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                             log_to_driver=False)
            if address:
                ray.init(address=address, **init_args)
            else:
                ray.init(num_cpus=max(workers, os.cpu_count() or 1), **init_args)
        actor = ray.remote(num_cpus=1)(_Worker)
        self._actors = [actor.remote(task_ref, settings, str(Path(artifact_root).resolve()), os.getcwd())
                        for _ in range(workers)]
        self._idle = list(self._actors)
        self._running: dict[ray.ObjectRef, tuple[Any, Any, float]] = {}

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return len(self._running)

    def submit(self, token: Any, candidate: dict[str, Any]) -> None:
        actor = self._idle.pop()
        ref = actor.evaluate.remote(candidate)
        self._running[ref] = (token, actor, time.perf_counter())

    def results(self, timeout: float = 1.0) -> list[tuple[Any, dict[str, Any]]]:
        """Finished evaluations as ``(token, outcome)``; waits at most ``timeout`` seconds for the first."""
        if not self._running:
            return []
        done, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if done:  # collect everything else that is already finished too
            done, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        finished = []
        for ref in done:
            token, actor, submitted = self._running.pop(ref)
            self._idle.append(actor)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # the worker itself died or could not start
                outcome = {"state": "FAIL", "error": f"worker failed: {type(exc).__name__}: {exc}",
                           "timings": {}, "latency": {}}
            outcome["timings"]["wall"] = time.perf_counter() - submitted
            finished.append((token, outcome))
        return finished

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        if self._owns_ray:
            ray.shutdown()
