"""Disk space: checked against what a study will keep before it starts, and a write that fails for space stops it
like Ctrl-C does (finished trials kept, the ones in flight queued again, a resume hint)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from tuner.core.errors import StudyError
from tuner.core.stop import StudyStopped

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FRONT_ALLOWANCE = 8  # front models expected beside the references, for the estimate


class DiskShortfall(StudyError):
    """Less free space than the study will keep; the message has the numbers."""


class OutOfDiskSpace(StudyStopped):
    """A write failed for space during the study: it stopped as on Ctrl-C."""

    def __init__(self, where: str, free_bytes: int | None = None, finished: int = 0, cancelled: int = 0):
        super().__init__("disk full", finished, cancelled)
        self.where, self.free_bytes = where, free_bytes

    def line(self) -> str:
        free = "" if self.free_bytes is None else f" ({self.free_bytes / 1e6:.0f} MB free)"
        return f"the disk is full{free}: {self.where}"

    def __str__(self) -> str:
        return self.line()


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a write refused for space; also by message, for the errors that
    ONNX Runtime and protobuf raise from C++."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(run_dir: Path, model_bytes: int, references: int, keep: str, budget: int) -> int:
    """Raise :class:`DiskShortfall` if ``run_dir``'s disk has less free space than the study will keep: with
    ``keep`` = front, the references and FRONT_ALLOWANCE front models; with all, every trial's; each at most the
    fp32 model's size, plus one build in flight (its export and its artifact). Returns the estimate, in bytes."""
    models = references + FRONT_ALLOWANCE if keep == "front" else budget
    need = (models + 2) * model_bytes
    free = free_bytes(run_dir)
    if free < need:
        raise DiskShortfall(
            f"not enough free disk for the study in {run_dir}: it keeps up to {models} models of at most "
            f"{model_bytes / 1e6:.0f} MB (keep_artifacts: {keep}) plus one build in flight, about "
            f"{need / 1e9:.2f} GB, and {free / 1e9:.2f} GB is free. Free some space, or give --output-dir on a "
            "larger disk.")
    return need
