"""One driver per study. A second `tuner run`/`tuner resume` of a study that a live driver holds is refused
before any work, naming the holder and the way to add capacity (more workers on that driver, or a Ray cluster);
a holder that is gone (its process dead on this host, or its heartbeat older than ``STALE_S`` from any host) is
taken over. Only the driver writes a study's journal and MLflow runs, so two drivers would each queue the
references again and, seeded alike, build and time the same candidates twice.

The lock is a file in the run directory, ``driver.lock`` (host, pid, since), created atomically; its modification
time is the holder's heartbeat, touched every ``HEARTBEAT_S`` by a daemon thread.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from tuner.core.errors import StudyError

LOCK = "driver.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # a holder whose heartbeat is this old is gone, wherever it ran


class StudyLocked(StudyError):
    """Another live driver holds the study; the message names it and the ways to add capacity."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class DriverLock:
    """Held while a driver runs a study (a context manager); ``log`` hears of a stale holder taken over."""

    def __init__(self, run_dir: Path, study: str, log: Callable[[str], None] = print,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.path = Path(run_dir) / LOCK
        self.study, self.log = study, log
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made: list[Path] = []
        self._mine = {"host": socket.gethostname(), "pid": os.getpid(),
                      "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def __enter__(self) -> DriverLock:
        # the folders made for the lock alone are removed with it if nothing else went there (bad input)
        self._made = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._create():
            holder = self._holder()
            if holder is None:  # removed between our attempt and the read: try again
                continue
            reason = self._stale(holder)
            if reason is None:
                raise StudyLocked(
                    f"study {self.study!r} in {self.path.parent} is being run by another driver (host "
                    f"{holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}). One driver runs "
                    "a study: to add capacity, give that driver more workers (`--workers N`) or a Ray cluster "
                    f"(`--address`). If it is not running, remove {self.path}.")
            self.log(f"study {self.study!r}: taking over from a driver that is gone (host {holder.get('host')}, pid "
                     f"{holder.get('pid')}, since {holder.get('since')}: {reason})")
            self.path.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="tuner-driver-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._holder()
        if holder is not None and holder.get("pid") == self._mine["pid"] and holder.get("host") == self._mine["host"]:
            self.path.unlink(missing_ok=True)
        for folder in self._made:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty: the study's
                break

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._mine, f)
        return True

    def _holder(self) -> dict | None:
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:  # written by a driver killed mid-write
            holder = {}
        return {**holder, "age_s": age}

    def _stale(self, holder: dict) -> str | None:
        """Why the holder is gone, or None if it may be alive."""
        if holder.get("host") == self._mine["host"] and isinstance(holder.get("pid"), int) \
                and not pid_alive(holder["pid"]):
            return "its process has exited"
        if holder["age_s"] > self.stale_s:
            return f"no heartbeat for {holder['age_s']:.0f} s"
        if "pid" not in holder:
            return "its lock file is incomplete"
        return None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass
