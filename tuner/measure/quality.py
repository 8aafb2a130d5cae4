"""The task's metric, computed on the outputs of the candidate's own ORT session."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from tuner.errors import UserCodeError
from tuner.task import Evaluation
from tuner.taskref import where


def session_outputs(session: ort.InferenceSession, inputs: tuple[np.ndarray, ...], batch_size: int) -> np.ndarray:
    """The session's first output for all samples, run in fixed-size batches (deterministic order)."""
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the model takes {len(names)} inputs {names}, but the evaluation gives {len(inputs)}.")
    outputs = []
    for start in range(0, len(inputs[0]), batch_size):
        feeds = {name: array[start : start + batch_size] for name, array in zip(names, inputs)}
        outputs.append(session.run(None, feeds)[0])
    return np.concatenate(outputs, axis=0)


def score(session: ort.InferenceSession, evaluation: Evaluation) -> float:
    return score_all(session, evaluation)[0]


def score_all(session: ort.InferenceSession, evaluation: Evaluation) -> tuple[float, dict[str, float]]:
    """The task's metric and its extra metrics, all on one pass of outputs."""
    outputs = session_outputs(session, evaluation.inputs, evaluation.batch_size)
    value = _call(evaluation.metric, outputs, evaluation.metric_name)
    if not np.isfinite(value):
        raise ValueError(f"metric {evaluation.metric_name!r} returned {value}.")
    return value, {name: _call(fn, outputs, name) for name, fn in evaluation.extra_metrics.items()}


def _call(metric, outputs: np.ndarray, name: str) -> float:
    try:
        return float(metric(outputs))
    except Exception as exc:  # the task's code: say so, and where
        raise UserCodeError(f"the task's metric {name!r} raised{where(exc)}: {type(exc).__name__}: {exc}") from exc
