"""The one place that chooses a study's executor: Ray (local or a cluster) by default, or in this process."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tuner.executors.base import Executor
from tuner.experiment import Experiment

# What a study calls to make its executor: the experiment, the study's uid, and the task the driver loaded (an
# in-process executor uses it rather than loading it again).
ExecutorFactory = Callable[[Experiment, str, Any], Executor]


def default_workers(latency_threads: int) -> int:
    """On a local Ray: one worker per core, less the cores kept for latency measurement. (On a cluster the
    executor counts the cluster's CPUs once connected.)"""
    return max(1, (os.cpu_count() or 1) - latency_threads)


def executor_factory(in_process: bool = False, workers: int | None = None, address: str | None = None
                     ) -> ExecutorFactory:
    """In this process, one evaluation at a time (always, on PyTorch's runtime); else Ray, locally with
    ``workers`` workers (default: one per core less the latency meter's) or on the cluster at ``address``."""
    if in_process:
        return _in_process

    def ray(experiment: Experiment, uid: str, task: Any) -> Executor:
        if experiment.runtime == "torch":  # one device, one meter: candidates are built and timed in this process
            return _in_process(experiment, uid, task)
        from tuner.executors.ray_executor import (
            RayExecutor,  # Ray is imported only when a study really runs
        )

        count = workers if workers is not None or address else default_workers(experiment.latency.threads)
        return RayExecutor(experiment.task_ref(), experiment.eval_settings(), experiment.paths.artifacts, count,
                           address, experiment.candidate_timeout_s, experiment.retries, experiment.latency.resource,
                           experiment.pending_timeout_s, uid)
    return ray


def _in_process(experiment: Experiment, uid: str, task: Any) -> Executor:
    from tuner.executors.inprocess import InProcessExecutor

    return InProcessExecutor(experiment.task_ref(), experiment.eval_settings(), experiment.paths.artifacts, task=task)
