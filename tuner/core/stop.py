"""Stopping a study gracefully: the first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop asking for trials and
gives the ones in flight a short wait to finish; a second signal stops at once.

Either way the study stays resumable: finished trials are kept, and the ones still in flight are recorded as
interrupted and queued to run again.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable


class StudyStopped(KeyboardInterrupt):
    """The study stopped on a signal; how many trials in flight finished and how many were cancelled."""

    def __init__(self, signal_name: str, finished: int = 0, cancelled: int = 0):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.finished = finished
        self.cancelled = cancelled


class StopRequest:
    """Set by the first SIGINT/SIGTERM while installed (main thread only); a second one raises
    KeyboardInterrupt where the program is. ``grace_s``: how long trials in flight may take to finish."""

    def __init__(self, grace_s: float = 30.0, log: Callable[[str], None] | None = None):
        self.grace_s = grace_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.signal_name: str | None = None
        self.deadline = float("inf")
        self.in_flight = 0  # kept up to date by the loop, for the message
        self.in_flight_at_stop = 0
        self._saved: dict[int, object] = {}
        self._shielded = 0
        self._deferred = False

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def request(self, signal_name: str) -> None:
        self.signal_name = signal_name
        self.in_flight_at_stop = self.in_flight
        self.deadline = time.monotonic() + self.grace_s
        self.log(f"\n{signal_name}: stopping. No new trials; the {self.in_flight} in flight get up to "
                 f"{self.grace_s:g} s to finish, then are cancelled and queued to run again. "
                 f"Press Ctrl-C again to stop now.")

    def _handle(self, signum: int, frame) -> None:
        if not self.requested:
            self.request(signal.Signals(signum).name)
        elif self._shielded:
            self._deferred = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shielded(self):
        """A second signal waits until the block is done (recording a result and telling Optuna: a trial cut
        between the two would be left RUNNING)."""
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1
            if self._deferred and not self._shielded:
                self._deferred = False
                raise KeyboardInterrupt

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()
