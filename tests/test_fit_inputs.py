"""The task's inputs, built for the model as trained, cut to what a pruned artifact declares."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tuner.measure.latency import session_feeds
from tuner.task import fit_to_declared, model_inputs


def test_arrays_are_cut_to_smaller_fixed_sizes_only_never_along_the_batch_axis_or_a_dynamic_one():
    cache = np.arange(2 * 4 * 3 * 5).reshape(2, 4, 3, 5)
    (cut,) = fit_to_declared([cache], [[1, 2, "past", 5]])
    assert cut.shape == (2, 2, 3, 5)  # batch 2 kept although 1 is declared; heads 4 -> 2; the past axis is named
    np.testing.assert_array_equal(cut, cache[:, :2])  # the leading heads, as a decoder's fit_inputs keeps
    (same,) = fit_to_declared([cache], [[None, 8, None, 5]])  # a larger declared size: left for ORT to refuse
    assert same is cache
    ids, other = fit_to_declared([np.zeros((2, 7)), cache], [None, [2, 4, None, 5]])
    assert ids.shape == (2, 7) and other is cache


def test_a_session_times_the_latency_inputs_cut_to_the_heads_its_graph_declares():
    past = helper.make_tensor_value_info("past", TensorProto.FLOAT, ["batch", 1, "past_sequence", 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, "past_sequence", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["past"], ["out"])], "g", [past], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"past": np.ones((1, 3, 6, 4), np.float32)}  # three heads, as the unpruned model caches
    with pytest.raises(Exception, match="dimension"):
        session.run(None, feeds)
    assert session.run(None, session_feeds(session, feeds))[0].shape == (1, 1, 6, 4)


def test_a_model_without_fit_inputs_takes_the_inputs_as_they_are():
    import torch

    inputs = (torch.zeros(1, 3),)
    assert model_inputs(torch.nn.Linear(3, 2), inputs) == inputs
