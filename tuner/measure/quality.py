"""The task's metric, computed on the outputs of the candidate's own ORT session."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort

from tuner.core.errors import UserCodeError, where
from tuner.task import Evaluation, first_output, model_inputs


def session_outputs(session: ort.InferenceSession, inputs: tuple[np.ndarray, ...], batch_size: int,
                    reduce=None) -> np.ndarray:
    """The session's first output for all samples, run in fixed-size batches (deterministic order); with
    ``reduce`` (`Evaluation.reduce`), what it makes of each batch's output and inputs."""
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the model takes {len(names)} inputs {names}, but the evaluation gives {len(inputs)}.")
    outputs = []
    for start in range(0, len(inputs[0]), batch_size):
        feeds = {name: array[start : start + batch_size] for name, array in zip(names, inputs)}
        output = session.run(None, feeds)[0]
        if reduce is not None:
            try:
                output = np.asarray(reduce(output, tuple(feeds.values())))
            except Exception as exc:  # the task's code
                raise UserCodeError(f"the task's evaluation reduce raised{where(exc)}: {type(exc).__name__}: "
                                    f"{exc}") from exc
        outputs.append(output)
    return np.concatenate(outputs, axis=0)


class TorchSession:
    """A torch module behind the two methods of an ORT session that scoring uses (``get_inputs``, ``run``): it
    scores a pruned fp32 model before it is exported (`tuner.evaluate.Evaluator` screens pruned candidates so).
    Its output is the module's first tensor output, as the ONNX export's first output would be."""

    def __init__(self, model, n_inputs: int):
        self.model = model.eval()
        self.n_inputs = n_inputs

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=f"input{i}") for i in range(self.n_inputs)]

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():  # the task's inputs as this (pruned) model takes them
            out = self.model(*model_inputs(self.model, [torch.from_numpy(np.ascontiguousarray(a))
                                                        for a in feeds.values()]))
        return [first_output(out).numpy()]


def score(session: ort.InferenceSession, evaluation: Evaluation) -> float:
    return score_all(session, evaluation)[0]


def score_all(session: ort.InferenceSession, evaluation: Evaluation) -> tuple[float, dict[str, float]]:
    """The task's metric and its extra metrics, all on one pass of outputs."""
    outputs = session_outputs(session, evaluation.inputs, evaluation.batch_size, evaluation.reduce)
    value = _call(evaluation.metric, outputs, evaluation.metric_name)
    if not np.isfinite(value):
        raise ValueError(f"metric {evaluation.metric_name!r} returned {value}.")
    return value, {name: _call(fn, outputs, name) for name, fn in evaluation.extra_metrics.items()}


def _call(metric, outputs: np.ndarray, name: str) -> float:
    try:
        return float(metric(outputs))
    except Exception as exc:  # the task's code: say so, and where
        raise UserCodeError(f"the task's metric {name!r} raised{where(exc)}: {type(exc).__name__}: {exc}") from exc


def subset_indices(n_total: int, samples: int, seed: int = 0) -> np.ndarray:
    """A fixed random subset of the evaluation set (the same for every candidate, so they compare alike)."""
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:samples])


def score_subset(session: ort.InferenceSession, evaluation: Evaluation, reference: np.ndarray,
                 indices: np.ndarray) -> tuple[float, float]:
    """The full-set metric estimated from the candidate's outputs on ``indices`` only, and its standard error.

    The task's metric reads the outputs of every sample, so the other samples take ``reference`` (the fp32
    model's outputs): the change of the metric, scaled by N / n, estimates the change a full run would show
    (exactly, for a metric that is a mean over samples: accuracy, mean cosine). The standard error comes from
    each sample's own contribution (the metric with only that sample changed), with the finite-population
    correction: computed from the data, never assumed.
    """
    n_total, n = len(reference), len(indices)
    outputs = session_outputs(session, tuple(a[indices] for a in evaluation.inputs), evaluation.batch_size,
                              evaluation.reduce)
    base = _call(evaluation.metric, reference, evaluation.metric_name)
    mixed = reference.copy()
    mixed[indices] = outputs
    estimate = base + (_call(evaluation.metric, mixed, evaluation.metric_name) - base) * n_total / n
    if not np.isfinite(estimate):
        raise ValueError(f"metric {evaluation.metric_name!r} returned {estimate} on a subset.")
    effects = np.empty(n)
    for j, i in enumerate(indices):
        one = reference.copy()
        one[i] = outputs[j]
        effects[j] = (_call(evaluation.metric, one, evaluation.metric_name) - base) * n_total
    correction = (n_total - n) / (n_total - 1) if n_total > 1 else 0.0
    stderr = float(effects.std(ddof=1) / np.sqrt(n) * np.sqrt(correction)) if n > 1 else float("inf")
    return float(estimate), stderr
