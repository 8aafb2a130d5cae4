"""Peak resident memory of this process, per stage: Linux's high-water mark (VmHWM), reset before each stage
(``/proc/self/clear_refs``), so a worker's peak while building one candidate is not that of an earlier one."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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


def release_memory(freeze: bool = False) -> None:
    """Give freed memory back to the OS: collect reference cycles (torch modules and export graphs hold
    some), then ask glibc to return its free heap pages. After the driver's checks on a BERT-base-size model
    this took its RSS from 4.5 GB to 1.1 GB; without it the process keeps the peak for its whole life.

    ``freeze``: then leave every object that survived the collection out of later ones (``gc.freeze()``), for a
    process whose long-lived state is loaded: a build worker's task (its model, data and modules, about 395,000
    objects on BERT-base) made each full collection walk them again, 0.18 s per candidate. Objects alive now
    that become garbage in a cycle later are not collected; a worker freezes once, after its first candidate."""
    gc.collect()
    if freeze:
        gc.freeze()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass
