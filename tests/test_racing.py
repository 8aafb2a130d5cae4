"""Racing the front: a close call is re-timed side by side with the front member it would displace, on real
artifacts and a real executor; what is asserted is which trials race and how the result is rewritten, never
what a timing measured."""

from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from tuner.core.candidate import Candidate
from tuner.core.records import StudyMeta
from tuner.executors import InProcessExecutor
from tuner.experiment import EvalSettings
from tuner.measure.latency import artifact_feeds
from tuner.search.loop import tell
from tuner.search.racing import FrontRace, NoiseFloor
from tuner.taskref import TaskRef

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("race") / "artifacts"
    ref = TaskRef("tiny_mlp.py:make_task", {}, TESTS)
    with InProcessExecutor(ref, EvalSettings(warmup=1, repeats=5), root) as executor:
        executor.submit("fp32", Candidate())
        executor.submit("int8", Candidate(precision=(("2", "int8"),)))
        got = dict(executor.results())
        task = executor.evaluator.task
        study = optuna.create_study(directions=["maximize", "minimize"])
        meta = StudyMeta(metric_name="accuracy", max_metric_drop=0.05, baseline_metric=got["fp32"].metric,
                         baseline_latency_ms=got["fp32"].latency.median_ms)
        meta.save(study)
        front = study.ask()
        tell(study, front, got["fp32"], meta)  # the front: the fp32 model alone
        yield executor, study, got["int8"], root, lambda path: artifact_feeds(task, path, 1)


def test_a_close_call_is_retimed_beside_its_rival_and_expressed_in_its_frame(setup):
    executor, study, result, root, feeds = setup
    rival = study.best_trials[0]
    lines = []
    race = FrontRace(executor, root, feeds, NoiseFloor((1.0, 1.1, 1.05)), lines.append)  # spread 10%: 5 rounds
    close = replace(result, metric=rival.values[0],
                    latency=replace(result.latency, median_ms=rival.values[1] * 0.97))
    trial = study.ask()
    raced = race(study, trial, close)
    attrs = trial.user_attrs
    assert attrs["race"]["rival"] == rival.number and attrs["race"]["rounds"] == 5
    assert attrs["latency_tuning_ms"] == close.latency.median_ms
    assert raced.latency.median_ms == pytest.approx(rival.values[1] * attrs["race"]["ratio"])
    assert race.races == 1 and lines[0].startswith(f"race: trial {trial.number} timed")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


@pytest.mark.parametrize("case", ["far", "worse", "infeasible", "reference"])
def test_clear_calls_and_references_are_not_raced(setup, case):
    executor, study, result, root, feeds = setup
    rival = study.best_trials[0]
    race = FrontRace(executor, root, feeds, NoiseFloor((1.0, 1.02)), lambda line: None)
    latency = rival.values[1] * (0.5 if case == "far" else 0.99)
    metric = {"worse": rival.values[0] - 0.01, "infeasible": rival.values[0] - 0.5}.get(case, rival.values[0])
    candidate = replace(result, metric=metric, latency=replace(result.latency, median_ms=latency))
    trial = study.ask()
    if case == "reference":
        trial.set_user_attr("reference", "uniform int8")
    assert race(study, trial, candidate) is candidate and race.races == 0 and "race" not in trial.user_attrs
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def test_the_noise_floor_sets_how_many_times_a_race_retimes():
    assert NoiseFloor((10.0, 10.2, 10.1)).race_rounds == 3
    assert NoiseFloor((10.0, 11.0)).race_rounds == 5
    floor = NoiseFloor((10.0, 13.0, 11.0))
    assert floor.spread == pytest.approx(3.0 / 11.0) and floor.race_rounds == 9
    assert "spread 27.3%" in floor.line()
