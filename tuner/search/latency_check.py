"""The latency model fitted at the end of a study, from its own reference trials, and checked on its trials.

The references' artifacts (kept by retention) are profiled in the driver once no build runs; the model
(:mod:`tuner.latency_model`) then predicts every completed trial, and the prediction is compared with what the
trial measured. The model goes to ``latency_model.json`` in the run directory (to seed later searches from),
the predictions to MLflow (``latency_predicted_ms`` on each trial run; the median and p90 relative error and
the rank correlation on the study run).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from tuner.core.paths import MODEL, RunPaths
from tuner.core.records import TrialMeta
from tuner.search.latency_model import LatencyModel, artifact_costs, prune_shapes
from tuner.space import SearchSpace


@dataclass(frozen=True)
class LatencyModelCheck:
    references: int  # reference trials profiled
    trials: int  # other completed trials predicted
    median_error: float  # |predicted - measured| / measured
    p90_error: float
    rank_correlation: float  # Spearman, predicted vs measured
    profile_s: float

    def line(self) -> str:
        head = f"latency model (per-layer ORT profiles of {self.references} references, {self.profile_s:.1f} s): "
        if not self.trials:  # e.g. every sampled trial was screened out before it was timed
            return head + "no completed trial beside the references to check it on"
        rank = f"{self.rank_correlation:.2f}" if self.rank_correlation == self.rank_correlation else "n/a"
        return (head + f"predicted vs measured on {self.trials} trials: median error {self.median_error:.1%}, "
                f"p90 {self.p90_error:.1%}, rank correlation {rank}")


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 1 and ra.std() and rb.std() else float("nan")


def fit_from_references(study: optuna.Study, space: SearchSpace, run_dir: Path, feeds_for: Callable[[Path], dict],
                        threads: int) -> tuple[LatencyModel, int]:
    """The model from the study's completed reference trials, timed as the study measured them."""
    references = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if TrialMeta.of(t).reference]
    profiled = []
    for trial in references:
        folder = RunPaths(run_dir).artifact(TrialMeta.of(trial).key)
        if (folder / MODEL).is_file():
            costs = artifact_costs(folder, feeds_for(folder / MODEL), trial.values[1], threads)
            profiled.append((space.decode(trial.params), costs))
    model = LatencyModel.fit(profiled, prune_shapes(space.groups, space.prune_choices, space.round_to))
    return model, len(profiled)


def check_latency_model(study: optuna.Study, space: SearchSpace, run_dir: Path, feeds_for: Callable[[Path], dict],
                        threads: int) -> tuple[LatencyModelCheck, dict[int, float]]:
    """Fit, predict every completed non-reference trial, write ``latency_model.json``; returns the check and
    the prediction of each trial by number."""
    start = time.perf_counter()
    model, n_refs = fit_from_references(study, space, run_dir, feeds_for, threads)
    profile_s = time.perf_counter() - start
    predicted, rows = {}, []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if TrialMeta.of(trial).reference:
            continue
        predicted[trial.number] = model.predict(space.decode(trial.params))
        rows.append((predicted[trial.number], trial.values[1]))
    errors = [abs(p - m) / m for p, m in rows]
    check = LatencyModelCheck(n_refs, len(rows), statistics.median(errors) if errors else float("nan"),
                              float(np.percentile(errors, 90)) if errors else float("nan"),
                              spearman([p for p, _ in rows], [m for _, m in rows]) if rows else float("nan"),
                              profile_s)
    (run_dir / "latency_model.json").write_text(json.dumps(
        {"model": model.to_dict(), "check": check.__dict__,
         "trials": {str(n): {"predicted_ms": p, "measured_ms": study.trials[n].values[1]}
                    for n, p in predicted.items()}}, indent=1))
    return check, predicted
