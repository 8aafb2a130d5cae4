"""Executors run the study's evaluations: :class:`InProcessExecutor` here, :class:`RayExecutor` on a local
Ray or a cluster. Both implement :class:`Executor`."""

from tuner.executors.base import Executor, Retime, Stage
from tuner.executors.inprocess import InProcessExecutor

__all__ = ["Executor", "InProcessExecutor", "RayExecutor", "Retime", "Stage"]


def __getattr__(name: str):
    if name == "RayExecutor":  # Ray is imported only when a Ray executor is asked for
        from tuner.executors.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'tuner.executors' has no attribute {name!r}")
