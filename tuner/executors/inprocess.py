"""Evaluate candidates in the calling process, one at a time, no Ray: for debugging a task, for machines
where Ray cannot start, and for testing the study loop quickly. Latency is timed in this process too, so
nothing else should run on the machine meanwhile."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuner.core.candidate import Candidate
from tuner.core.records import FULL, Fidelity, LatencyStats, TrialResult
from tuner.executors.base import Executor, Retime
from tuner.experiment import EvalSettings
from tuner.measure.memory import release_memory
from tuner.taskref import TaskRef


class InProcessExecutor(Executor):
    """Builds, scores and times each candidate in this process when ``results`` is called."""

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, artifact_root: str | Path,
                 export_root: str | Path | None = None, task=None):
        """``task``: the task ``task_ref`` names, when the caller has loaded it already (it is not loaded again)."""
        from tuner.evaluate_torch import (
            evaluator_class,  # torch and ORT, only once an executor is really made
        )

        # Pruned exports are a cache outside the run directory, as on Ray workers (node-local scratch).
        self.artifact_root = Path(artifact_root)
        self._scratch = None if export_root else tempfile.TemporaryDirectory(prefix="tuner-exports-")
        self.evaluator = evaluator_class(settings)(task_ref, settings, artifact_root,
                                   export_root=export_root or self._scratch.name, task=task)
        self._pending: deque[tuple[Hashable, Candidate, Fidelity, float]] = deque()

    @property
    def idle(self) -> int:
        return 0 if self._pending else 1

    def submit(self, token: Hashable, candidate: Candidate, fidelity: Fidelity = FULL) -> None:
        self._pending.append((token, candidate, fidelity, time.perf_counter()))

    def results(self, timeout: float = 1.0) -> list[tuple[Hashable, TrialResult]]:
        finished = []
        while self._pending:
            token, candidate, fidelity, submitted = self._pending.popleft()
            start = time.perf_counter()
            result = self.evaluator.evaluate(candidate, fidelity)
            if (not fidelity.timed or result.screened_out) and result.artifact_dir and not result.cached_build:
                shutil.rmtree(result.artifact_dir, ignore_errors=True)  # never timed, never kept: as on Ray
            release_memory()
            worker_total = time.perf_counter() - start - result.timings.get("latency", 0.0)
            finished.append((token, result.with_timings(worker_total=worker_total,
                                                        wall=time.perf_counter() - submitted)))
        return finished

    def retime(self, artifacts: Sequence[Retime], feeds: Mapping[str, Any]) -> dict[Hashable, LatencyStats]:
        from tuner.evaluate import time_artifact

        return {a.token: time_artifact(a.model_path, dict(feeds), self.evaluator.settings)[0] for a in artifacts}

    def close(self) -> None:
        self._pending.clear()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
