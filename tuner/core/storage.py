"""Where a study lives: its Optuna journal in the run directory. Light: `tuner front` and `tuner pick` open
studies without loading torch or Ray."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tuner.core.journal import check_journal
from tuner.core.paths import RunPaths


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def open_study(run_dir: Path, name: str, sampler: optuna.samplers.BaseSampler | None = None,
               directions: list[str] | None = None, log: Callable[[str], None] = _stderr) -> optuna.Study:
    """The study in ``run_dir``; with ``directions``, created if it does not exist yet (a writer: a record cut
    off mid-write at the journal's end is cut off the file first, see :mod:`tuner.core.journal`)."""
    journal = RunPaths(Path(run_dir)).journal
    torn = check_journal(journal, repair=directions is not None)
    if torn is not None:
        log(torn.message())
    storage = JournalStorage(JournalFileBackend(str(journal)))
    if directions is None:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                               load_if_exists=True)


def load_finished_study(name: str, output_dir: str | Path = "tuner-runs") -> optuna.Study:
    journal = RunPaths(Path(output_dir) / name).journal
    if not journal.is_file():
        raise FileNotFoundError(f"no study {name!r}: {journal} does not exist "
                                "(run `tuner run EXPERIMENT` first, or pass --output-dir).")
    return open_study(journal.parent, name)
