"""The Python API: what the `tuner` command does, as functions that return typed results.

    import tuner

    result = tuner.run("experiments/digits_cnn/experiment.yaml", trials=20)   # StudyResult
    table = tuner.front("digits-cnn")                                        # Front
    record = tuner.pick("digits-cnn", min_metric=0.99, out="picked")          # ArtifactRecord

Each function imports what its work needs when called: ``front`` and ``pick`` (without ``register``) load
neither torch nor Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.core.errors import StudyError
from tuner.core.records import ArtifactRecord, StudyMeta
from tuner.core.storage import load_finished_study

if TYPE_CHECKING:
    from tuner.experiment import Experiment
    from tuner.results.front import FrontRow
    from tuner.search.study import StudyResult


@dataclass(frozen=True)
class Front:
    """A study's Pareto front and references as table rows (fastest first)."""

    study: str
    metric_name: str
    maximize: bool
    n_trials: int
    baseline_metric: float | None
    baseline_latency_ms: float | None
    tracking_uri: str | None
    rows: list[FrontRow]
    references: list[FrontRow]


def run(experiment: str | Path | Experiment, *, trials: int | None = None, workers: int | None = None,
        address: str | None = None, tracking_uri: str | None = None, output_dir: str | Path | None = None,
        in_process: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> StudyResult:
    """Run (or continue) the study of an experiment file until it has ``trials`` trials (default: the file's).

    ``workers`` evaluations run at a time on a local Ray, or on the Ray cluster at ``address``; with
    ``in_process`` they run one at a time in this process, without Ray.
    """
    from tuner.executors.factory import executor_factory
    from tuner.experiment import Experiment, load_experiment
    from tuner.search.study import run_study

    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment)
    if output_dir is not None:
        experiment = experiment.model_copy(update={"output_dir": str(output_dir)})
    return run_study(experiment, trials=trials, tracking_uri=tracking_uri, progress=progress, log=log,
                     executor=executor_factory(in_process, workers, address))


def experiment_file_of(study: str, output_dir: str | Path = "tuner-runs") -> str:
    """The experiment file a study was run from (what `tuner resume STUDY` runs again)."""
    source = StudyMeta.load(load_finished_study(study, output_dir)).experiment_file
    if not source or not Path(source).is_file():
        raise StudyError(f"study {study!r}: " + (f"its experiment file {source} no longer exists" if source else
                         "it does not record its experiment file") + "; run `tuner run EXPERIMENT` with that file.")
    return source


def front(study: str, output_dir: str | Path = "tuner-runs") -> Front:
    """The Pareto front of a study (feasible, Pareto-optimal trials) and its reference trials."""
    return _front_of(load_finished_study(study, output_dir))


def _front_of(opened) -> Front:
    from tuner.results.front import completed_rows, front_rows

    meta = StudyMeta.load(opened)
    return Front(opened.study_name, meta.metric_name, meta.maximize, len(opened.trials), meta.baseline_metric,
                 meta.baseline_latency_ms, meta.tracking_uri, front_rows(opened),
                 [r for r in completed_rows(opened) if r.reference])


def choose(table: Front, *, min_metric: float | None = None, max_latency_ms: float | None = None,
           max_size_mb: float | None = None, knee: bool = False) -> FrontRow:
    """The front member that the constraints pick (see :func:`tuner.results.pick.choose`)."""
    from tuner.results.pick import choose as choose_row

    return choose_row(table.rows, table.metric_name, table.maximize, min_metric, max_latency_ms, max_size_mb, knee)


def pick(study: str, *, min_metric: float | None = None, max_latency_ms: float | None = None,
         max_size_mb: float | None = None, knee: bool = False, out: str | Path = ".", register: str | None = None,
         alias: str | None = None, tracking_uri: str | None = None, output_dir: str | Path = "tuner-runs"
         ) -> ArtifactRecord:
    """Pick a front member by constraint and write ``model.onnx``, ``candidate.json`` and ``MODEL_CARD.md`` to
    ``out``; with ``register``, register it in the MLflow Model Registry (``alias`` points at the version)."""
    from tuner.results.pick import export_pick

    if alias and not register:
        raise ValueError("an alias needs register=NAME.")
    opened = load_finished_study(study, output_dir)
    table = _front_of(opened)
    row = choose(table, min_metric=min_metric, max_latency_ms=max_latency_ms, max_size_mb=max_size_mb, knee=knee)
    return export_pick(opened, row, out, tracking_uri or table.tracking_uri, register, alias)


def verify(study: str, trial: int, output_dir: str | Path = "tuner-runs", tracking_uri: str | None = None
           ) -> dict[str, Any]:
    """Rebuild or reload a trial's artifact in a fresh process, re-score and re-time it (see `tuner.results.verify`)."""
    from tuner.results.verify import verify as verify_trial

    return verify_trial(study, trial, output_dir, tracking_uri)
