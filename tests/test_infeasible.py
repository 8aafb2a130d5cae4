"""Failed and screened-out candidates reach the GP sampler as infeasible trials (`tuner.search.samplers`)."""

import optuna
import pytest
from optuna.trial import TrialState

from tuner.core.records import COMPLETE, FAIL, LatencyStats, StudyMeta, TrialResult
from tuner.search.loop import tell
from tuner.search.samplers import SeesInfeasible, as_seen

optuna.logging.set_verbosity(optuna.logging.WARNING)
META = StudyMeta(max_metric_drop=0.02, baseline_metric=0.9)


def result(metric: float | None, latency: float = 1.0, screened: bool = False) -> TrialResult:
    if metric is None:
        return TrialResult(key="k", candidate={}, state=FAIL, error="did not build")
    stats = None if screened else LatencyStats(median_ms=latency, p90_ms=latency, cv=0.0, repeats=3)
    return TrialResult(key="k", candidate={}, state=COMPLETE, metric=metric, latency=stats, screened_out=screened,
                       scored_samples=50 if screened else None, metric_stderr=0.01 if screened else None)


def study_with(sampler=None) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    META.save(study)
    return study


def told(study: optuna.Study, params: dict, outcome: TrialResult) -> None:
    study.enqueue_trial(params)
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 20)})
    tell(study, trial, outcome, META)


def test_failed_and_screened_trials_are_seen_complete_infeasible_and_worse_than_every_completed_one():
    study = study_with()
    told(study, {"x": 1}, result(0.89, latency=3.0))  # feasible
    told(study, {"x": 2}, result(0.80, latency=1.0))  # infeasible, completed
    told(study, {"x": 3}, result(None))  # did not build
    told(study, {"x": 4}, result(0.50, screened=True))  # screened out on the subset
    stored = study.get_trials(deepcopy=False)
    assert [t.state for t in stored] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2
    seen = as_seen(stored, study.directions, META)
    assert [t.state for t in seen] == [TrialState.COMPLETE] * 4
    assert seen[0] is stored[0] and seen[1] is stored[1]  # completed trials pass through unchanged
    failed, screened = seen[2], seen[3]
    assert failed.values == [0.80, 3.0]  # the worst metric and the worst latency observed
    assert screened.values == [pytest.approx(0.50), 3.0]  # its own estimate, worse than any completed one
    # one constraint key for all, as a completed trial's; the failed one is past every violation observed
    assert set(failed.constraints) == set(screened.constraints) == set(stored[0].constraints) == {"metric_drop"}
    assert screened.constraints["metric_drop"] == pytest.approx(0.4 - 0.02)
    assert failed.constraints["metric_drop"] > max(t.constraints["metric_drop"] for t in seen if t is not failed)
    assert study.trials[2].state == TrialState.PRUNED  # the storage is unchanged


def test_nothing_is_imputed_before_a_trial_completes():
    study = study_with()
    told(study, {"x": 3}, result(None))
    assert as_seen(study.trials, study.directions, META)[0].state == TrialState.PRUNED


def half_fails(sampler: optuna.samplers.BaseSampler, dims: int, trials: int) -> int:
    """x0 >= 10 does not build; below it, the metric grows with x0: an optimizer that never sees the failures
    keeps going where they are. Returns how many of the sampler's trials failed (after a start of 6)."""
    space = {f"x{i}": optuna.distributions.IntDistribution(0, 20) for i in range(dims)}

    def outcome(x: int) -> TrialResult:
        return result(None if x >= 10 else 0.88 + x / 1000, latency=1.0 + x / 100)

    study = study_with(sampler)
    for x in (0, 3, 6, 9, 12, 15):  # the start: two failures, four completed
        study.enqueue_trial({name: x for name in space})
        tell(study, study.ask(space), outcome(x), META)
    failures = 0
    for _ in range(trials):
        trial = study.ask(space)
        failures += trial.params["x0"] >= 10
        tell(study, trial, outcome(trial.params["x0"]), META)
    return failures


@pytest.mark.slow  # a whole study or two: in the full suite
def test_gp_stops_proposing_candidates_where_builds_fail_once_it_sees_the_failures():
    def make():
        return optuna.samplers.GPSampler(seed=0, n_startup_trials=4)

    blind, seeing = half_fails(make(), 1, 10), half_fails(SeesInfeasible(make()), 1, 10)
    assert blind >= 8 and seeing <= 2, (blind, seeing)  # blind, it extrapolates the metric into the failures
