"""Latency of a PyTorch callable on its device: warmed up, repeated; CUDA events on a GPU, a wall clock on a CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tuner.core.records import LatencyStats


@dataclass(frozen=True)
class TorchTiming:
    latency: LatencyStats
    peak_memory_mb: float | None  # peak GPU memory allocated while timing (None on a CPU)


def time_callable(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], warmup: int = 10,
                  repeats: int = 50) -> TorchTiming:
    """Median, p90 and coefficient of variation of ``repeats`` calls after ``warmup`` calls, in ms. On CUDA each
    call is bracketed by events on the current stream (GPU time, launch gaps included)."""
    cuda = inputs[0].is_cuda
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*inputs)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*inputs)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                began = time.perf_counter()
                fn(*inputs)
                times.append((time.perf_counter() - began) * 1e3)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    mean = statistics.fmean(times)
    stats = LatencyStats(statistics.median(times), float(np.percentile(times, 90)),
                         statistics.pstdev(times) / mean if mean else 0.0, repeats)
    return TorchTiming(stats, peak)
