"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback.

Defined here, in a module that imports nothing of `tuner` or beyond the standard library, so that any module can
raise them and the CLI can catch them without loading the modules that raise them. Beside them, the helpers that
find the line of the user's code an exception came from, for those one-line messages.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path


class ExperimentError(ValueError):
    """An experiment file that cannot run; the message names file, field and value."""


class SpaceError(ValueError):
    """A search-space file that cannot be searched; the message names file, rule and value."""


class TaskError(ValueError):
    """A task reference that cannot be loaded; the message names the spec and what is wrong."""


class ExportError(RuntimeError):
    """A model the chosen exporter cannot turn into ONNX; the message names the model, the exporter, the line of
    the user's code it stopped at and what to try."""


class UserCodeError(RuntimeError):
    """The task's own code (its metric, its finetune hook) raised; the message names it, the line and the
    exception. A candidate that meets it is FAIL; the fp32 baseline or a pre-flight check that meets it stops
    the study before any trial."""


class StudyError(RuntimeError):
    """The study cannot go on (for example: the fp32 model itself does not build)."""


class ClusterError(RuntimeError):
    """The cluster cannot run the study as configured (missing resource, workers that cannot start)."""


class PickError(ValueError):
    """No front member meets the constraint (the message says what the front offers)."""


USER_ERRORS = (ExperimentError, SpaceError, StudyError, PickError, TaskError, ExportError, FileNotFoundError)


# -- the user's frame in a traceback ---------------------------------------------------------------------------------

_LIBRARY_PATHS = (str(Path(__file__).parent.parent), "site-packages", "dist-packages", "<frozen", "<string>",
                  "/lib/python")


def is_user_file(filename: str) -> bool:
    """Whether a traceback's file is the user's code, not tuner's, torch's or another installed package's."""
    return not any(part in filename for part in _LIBRARY_PATHS)


def user_frame(exc: BaseException, fallback: bool = True) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback in the user's code (not tuner, torch or another installed
    package); with ``fallback``, else the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    users = [f for f in frames if is_user_file(f.filename)]
    return (users or (frames if fallback else []) or [None])[-1]


def where(exc: BaseException) -> str:
    """`` (at file:line)`` of the frame :func:`user_frame` finds, or nothing."""
    frame = user_frame(exc)
    return f" (at {frame.filename}:{frame.lineno})" if frame else ""


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def user_line_in_chain(exc: BaseException) -> str:
    """``file:line (code)`` of the first frame outside torch, tuner and installed packages that the error, its
    causes or their messages name (torch's exporter quotes the failing frame in its message), or nothing."""
    frames: list[tuple[str, int, str]] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames += [(m[0], int(m[1]), m[3].strip()) for m in _FRAME.findall(str(exc))]
        frames += [(f.filename, f.lineno, (f.line or "").strip()) for f in traceback.extract_tb(exc.__traceback__)]
        exc = exc.__cause__ or exc.__context__
    for filename, line, code in frames:
        if is_user_file(filename):
            return f"{filename}:{line}" + (f" (`{code}`)" if code else "")
    return ""
