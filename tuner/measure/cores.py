"""Which cores a process may use: the latency meter's, kept free of builds (hyperthread siblings included), and
the builders'. Standard library only."""

from __future__ import annotations

import os
from pathlib import Path


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
