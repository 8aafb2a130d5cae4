"""A task by reference (``package.module:function`` or ``path/to/file.py:function`` plus arguments): what an
experiment names and what crosses process boundaries. Loading it imports the user's code; naming it imports
nothing heavy."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.core.errors import TaskError, where

if TYPE_CHECKING:
    from tuner.task import Task


@dataclass(frozen=True)
class TaskRef:
    """A task by reference: what crosses process boundaries instead of the task itself."""

    spec: str
    args: dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."  # relative file specs resolve against this (the experiment file's folder)

    def fingerprint(self) -> str:
        """Stable identity of the task for artifact keys (spec + arguments)."""
        payload = json.dumps({"spec": self.spec, "args": self.args}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def load(self) -> Task:
        """Import the task function and call it with ``args`` (the user's model is built or loaded here)."""
        from tuner.task import Task  # torch: only where a task is really loaded

        fn = resolve_task_function(self.spec, self.base_dir)
        try:
            with _load_reports_in_one_line():
                task = fn(**self.args)
        except Exception as exc:  # the user's code: say where it failed, in one line
            raise TaskError(f"task {self.spec!r} raised while loading{where(exc)}: {type(exc).__name__}: {exc}"
                            ) from exc
        if not isinstance(task, Task):
            raise TaskError(f"task function {self.spec!r} must return tuner.Task, but returned {type(task).__name__}.")
        return task


def resolve_task_function(spec: str, base_dir: str = ".") -> Callable[..., Task]:
    """Import ``package.module:function`` or ``path/to/file.py:function``."""
    module_part, sep, func_name = spec.rpartition(":")
    if not sep or not module_part or not func_name:
        raise TaskError(f"task {spec!r} must look like 'package.module:function' or 'path/to/file.py:function'.")
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_absolute():
            path = Path(base_dir) / path
        if not path.is_file():
            raise TaskError(f"task {spec!r}: file {path} does not exist.")
        mod_name = f"tuner_user_task_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
        module = sys.modules.get(mod_name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise TaskError(f"task {spec!r}: importing {path} raised{where(exc)}: {type(exc).__name__}: {exc}"
                                ) from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise TaskError(f"task {spec!r}: cannot import module {module_part!r}: {exc}") from exc
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise TaskError(f"task {spec!r}: {module_part!r} has no function {func_name!r}.")
    return fn


@contextlib.contextmanager
def _load_reports_in_one_line():
    """While a task loads: a Hugging Face model's load report (a table of every checkpoint key it did not use or
    did not find, printed on each load) becomes one line with the counts, and its loading bar is left out."""
    logger = logging.getLogger("transformers.modeling_utils")
    condense = _LoadReportLine()
    logger.addFilter(condense)
    # its per-load progress bar too, where the task's module imported transformers already
    hf_logging = sys.modules.get("transformers.utils.logging")
    bar = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if bar:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.removeFilter(condense)
        if bar:
            hf_logging.enable_progress_bar()


_REPORT_HEAD = re.compile(r"(\w+)\W*LOAD REPORT\W*from: (\S+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _LoadReportLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = _ANSI.sub("", record.getMessage())
        head = _REPORT_HEAD.search(text)
        if head is None:
            return True
        # each status appears once per key, and once more in the report's notes
        counts = {status: max(text.count(status) - 1, 0) for status in ("UNEXPECTED", "MISSING", "MISMATCH")}
        said = ", ".join(f"{n} {status.lower()}" for status, n in counts.items() if n) or "see transformers' report"
        record.msg, record.args = (f"{head.group(1)} loaded from {head.group(2)}: checkpoint keys {said} "
                                   "(transformers' load report, in one line)"), ()
        return True
