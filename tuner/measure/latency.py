"""Latency of one ORT session: warmed up, repeated, summarized by median, p90 and spread."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tuner.core.records import LatencyStats
from tuner.task import Task, fit_to_declared


def measure_latency(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], warmup: int = 10,
                    repeats: int = 50) -> LatencyStats:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats >= 1 and warmup >= 0` must hold, but got ({repeats=}, {warmup=}).")
    for _ in range(warmup):
        session.run(None, dict(feeds))
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        session.run(None, dict(feeds))
        times[i] = time.perf_counter() - start
    times_ms = times * 1e3
    return LatencyStats(
        median_ms=float(np.median(times_ms)),
        p90_ms=float(np.percentile(times_ms, 90)),
        cv=float(times_ms.std() / times_ms.mean()),
        repeats=repeats,
    )


def measure_phases(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
                   phases: Mapping[str, Mapping[str, np.ndarray]], warmup: int = 10, repeats: int = 50) -> LatencyStats:
    """:func:`measure_latency` of ``feeds``, then the median of each further phase on the same session (each cut
    to what the session declares: :func:`session_feeds`)."""
    stats = measure_latency(session, session_feeds(session, feeds), warmup, repeats)
    timed = {name: measure_latency(session, session_feeds(session, phase), warmup, repeats).median_ms
             for name, phase in phases.items()}
    return replace(stats, phases=timed)


def session_feeds(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` cut to the fixed sizes the session's inputs declare, where smaller (`tuner.task.fit_to_declared`):
    the latency inputs are built for the model as trained, and a decoder whose key/value groups were pruned caches
    fewer heads. They are the example inputs the model was exported from, so any other artifact takes them whole."""
    declared = {i.name: i.shape for i in session.get_inputs()}
    return dict(zip(feeds, fit_to_declared(list(feeds.values()), [declared.get(name) for name in feeds])))


def confine_default_ort_sessions() -> None:
    """Make ORT sessions that libraries open with default options (ORT's quantization calibrator, its
    transformer optimizer) single-threaded. By default ORT starts one thread per physical core and pins each
    to its core, which would put build work on the cores kept for latency; with an explicit thread count it
    sets no affinity, so the threads stay on the cores this process is pinned to."""
    if getattr(ort.SessionOptions, "_tuner_confined", False):
        return

    class SessionOptions(ort.SessionOptions):
        _tuner_confined = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.intra_op_num_threads = 1
            self.inter_op_num_threads = 1

    ort.SessionOptions = SessionOptions


def latency_feeds(task: Task, input_names: list[str], batch_size: int) -> dict[str, np.ndarray]:
    """The example inputs, repeated or cut along the batch axis to ``batch_size``."""
    feeds = {}
    for name, tensor in zip(input_names, task.example_inputs):
        array = tensor.numpy()
        reps = -(-batch_size // len(array))
        feeds[name] = np.concatenate([array] * reps, axis=0)[:batch_size]
    return feeds


def artifact_feeds(task: Task, model_path: str | Path, batch_size: int) -> dict[str, np.ndarray]:
    """The latency inputs for an artifact, by its graph's input names."""
    return latency_feeds(task, _input_names(model_path), batch_size)


def phase_feeds(task: Task, model_path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The task's further latency phases (``Task.latency_phases``) by the artifact's input names, as given."""
    names = _input_names(model_path) if task.latency_phases else []
    return {phase: {name: t.numpy() for name, t in zip(names, inputs)} for phase, inputs in task.latency_phases.items()}


def _input_names(model_path: str | Path) -> list[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]
