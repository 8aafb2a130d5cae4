"""Peak resident memory of this process, per stage: Linux's high-water mark (VmHWM), reset before each stage
(``/proc/self/clear_refs``), so a worker's peak while building one candidate is not that of an earlier one."""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager


def reset_peak() -> bool:
    """Start a new high-water mark at the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak RSS in MB since the last reset (or since it started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


@contextmanager
def peak_rss(into: MutableMapping[str, float], name: str) -> Iterator[None]:
    """Record in ``into[name]`` the peak RSS (MB) of this process while the block runs."""
    reset_peak()
    try:
        yield
    finally:
        into[name] = max(into.get(name, 0.0), peak_rss_mb())
