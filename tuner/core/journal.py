"""A study's journal checked before Optuna reads it: a last record cut off mid-write (the driver killed, the
machine losing power) is found and, for a study that goes on, cut off the file; a damaged record before the last
is a clear error.

Optuna appends each record as one JSON line and, reading, skips a last line with no newline; but the next record
appended after such a fragment would share its line and make the journal unreadable from then on. So a driver that
will write cuts the fragment off first (kept beside the journal as ``optuna.journal.torn``), and nothing else in
the file is rewritten. The trial whose record was torn is left RUNNING, and goes through what a killed driver
leaves: completed from MLflow if its result reached it, otherwise run again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tuner.core.errors import StudyError


class JournalError(StudyError):
    """A journal damaged before its last record; the message names the file, the line and what to do."""


@dataclass(frozen=True)
class TornTail:
    """The fragment of a record cut off mid-write at the end of a journal."""

    journal: Path
    size: int  # bytes of the fragment
    line: int  # its line number
    kept: Path | None  # where the fragment was moved to (None: left in place, for a reader)

    def message(self) -> str:
        where = f"moved to {self.kept.name}" if self.kept else "ignored"
        return (f"{self.journal}: its last record (line {self.line}, {self.size} bytes) was cut off mid-write and "
                f"is {where}; the study goes on from the last complete record (a trial it finished runs again "
                "unless MLflow has its result)")


def check_journal(journal: Path, repair: bool) -> TornTail | None:
    """The torn last record of ``journal``, if any; ``repair``: cut it off the file first (a writer must). Raises
    :class:`JournalError` for a damaged record before the last one."""
    if not journal.is_file():
        return None
    with open(journal, "rb") as f:
        data = f.read()
    complete = data.rfind(b"\n") + 1  # the end of the last complete line
    lines = data[:complete].split(b"\n")[:-1]
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except ValueError as exc:
            raise JournalError(
                f"{journal}: line {number} of {len(lines)} is not a complete record ({exc}); the journal was damaged "
                "before its last record (a record cut off mid-write, then another appended to it by a version "
                "that did not check). Restore the run directory from a copy, or move it away and run the "
                "study anew.") from None
    if complete == len(data):
        return None
    fragment = data[complete:]
    kept = None
    if repair:
        kept = journal.with_name(journal.name + ".torn")
        with open(kept, "ab") as out:
            out.write(fragment + b"\n")
        with open(journal, "r+b") as f:
            f.truncate(complete)
            f.flush()
            os.fsync(f.fileno())
    return TornTail(journal, len(fragment), len(lines) + 1, kept)


def release_stale_lock(journal: Path) -> bool:
    """Remove Optuna's lock on ``journal`` (``optuna.journal.lock``) left by a driver killed while it appended a
    record. Only the driver holding the study (:mod:`tuner.core.driver_lock`) may call this: no other process
    writes the journal, so the lock is stale. (Optuna would wait forever on it where the journal's path is
    relative: the lock is a symbolic link to that path, dangling from the lock's folder, so its grace period,
    read from the target's modification time, never runs.) Returns whether there was one."""
    lock = journal.with_name(journal.name + ".lock")
    if not (lock.is_symlink() or lock.exists()):
        return False
    lock.unlink(missing_ok=True)
    return True
