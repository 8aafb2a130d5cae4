"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from tuner.experiment import ExperimentError
from tuner.pick import PickError
from tuner.space import SpaceError
from tuner.study import StudyError
from tuner.task import TaskError

USER_ERRORS = (ExperimentError, SpaceError, StudyError, PickError, TaskError, FileNotFoundError)
