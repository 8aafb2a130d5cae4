"""Latency of one ORT session: warmed up, repeated, summarized by median, p90 and spread."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    cv: float  # coefficient of variation: std / mean of the repeats
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


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


def split_cores(threads: int) -> tuple[set[int], set[int]] | None:
    """(latency cores, build cores) of this node: the last ``threads`` cores the process may use, with their
    hyperthread siblings, are kept for latency; the rest for builds and accuracy. None when the node has no
    core to spare."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(allowed) <= threads:
        return None
    timed = set(allowed[-threads:])
    kept = set(timed)
    for cpu in timed:  # a sibling shares the core's execution units: no build may run there
        kept |= _siblings(cpu)
    rest = set(allowed) - kept
    return (timed, rest) if rest else None


def _siblings(cpu: int) -> set[int]:
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    try:
        text = path.read_text().strip()
    except OSError:
        return {cpu}
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus |= set(range(int(first), int(last or first) + 1))
    return cpus


def pin(cores: set[int] | None) -> None:
    """Pin the calling thread (and the threads it starts from now on, such as ORT's pool) to ``cores``."""
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


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
