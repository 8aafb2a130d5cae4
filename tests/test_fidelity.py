"""Scoring on a subset of the evaluation set: the estimate of the full-set metric and its standard error."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tuner.core.records import FULL, Fidelity
from tuner.measure.quality import score_subset, subset_indices
from tuner.task import Evaluation


@pytest.fixture(scope="module")
def identity():
    """A session that returns its input: the evaluation inputs are the 'candidate outputs' themselves."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_mean_metric_is_estimated_exactly_from_the_subset_with_its_sampling_error(identity):
    n_total, samples = 1000, 200
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, n_total)
    reference = np.eye(3, dtype=np.float32)[labels]  # the fp32 model: right on every sample
    wrong = rng.random(n_total) < 0.3  # the candidate is wrong on 30% of the samples
    candidate = np.eye(3, dtype=np.float32)[np.where(wrong, (labels + 1) % 3, labels)]
    evaluation = Evaluation(inputs=(candidate,), metric=lambda out: float((out.argmax(1) == labels).mean()))

    estimate, stderr = score_subset(identity, evaluation, reference, subset_indices(n_total, samples))
    idx = subset_indices(n_total, samples)
    assert len(set(idx)) == samples and np.array_equal(idx, subset_indices(n_total, samples))  # fixed subset
    assert estimate == pytest.approx(1.0 - wrong[idx].mean())  # the subset's own accuracy, exactly
    effects = -wrong[idx].astype(float)  # each sample's change of the accuracy, times N
    expected = effects.std(ddof=1) / np.sqrt(samples) * np.sqrt((n_total - samples) / (n_total - 1))
    assert stderr == pytest.approx(expected)
    assert abs(estimate - (1.0 - wrong.mean())) <= 4 * stderr  # the full-set truth is within reach

    untouched, zero = score_subset(identity, Evaluation(inputs=(reference,), metric=evaluation.metric), reference, idx)
    assert untouched == pytest.approx(1.0) and zero == 0.0  # a candidate equal to fp32 drops nothing, surely


def test_fidelity_round_trips_and_full_is_the_default():
    assert FULL.full and not Fidelity(samples=64).full and not Fidelity(timed=False).full
    assert Fidelity.from_dict(Fidelity(64, False).to_dict()) == Fidelity(64, False)
    assert Fidelity.from_dict(None) == FULL
