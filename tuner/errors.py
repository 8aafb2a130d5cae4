"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback.

Defined here, in a module that imports nothing, so that any module can raise them and the CLI can catch them
without loading the modules that raise them.
"""


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
