"""What the build reuses between trials gives the same artifact as building from scratch."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from zoo import make_task

from tuner.build import quantize
from tuner.build.export import export_onnx, layer_weights, map_layers
from tuner.build.layers import quantizable_layers


class _Unreadable:
    """Calibration data that must not be read: the cached ranges have to serve."""

    def __iter__(self):
        raise AssertionError("calibration ran again")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    task = make_task("plain-cnn")
    tmp = tmp_path_factory.mktemp("cnn")
    export_onnx(task.model, task.example_inputs, tmp / "fp32.onnx")
    layers = quantizable_layers(task.model)
    nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(task.model, layers))
    calibration = [[t.numpy() for t in batch] for batch in task.calibration_inputs]
    return tmp / "fp32.onnx", [nodes[name].name for name in layers], calibration


def _initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_static_int8_from_cached_ranges_equals_calibrating_per_trial(exported, tmp_path):
    source, nodes, calibration = exported
    assert len(nodes) >= 3
    first = {node: "int8" if i == 0 else "fp32" for i, node in enumerate(nodes)}  # fills the cache
    mix = {node: "fp32" if i == 0 else "int8" for i, node in enumerate(nodes)}  # quantizes other layers
    cache = tmp_path / "ranges"
    quantize.apply_precisions(source, tmp_path / "first.onnx", first, calibration, calibration_cache=cache)
    assert len(list(cache.glob("*.json"))) == 1
    quantize.apply_precisions(source, tmp_path / "cached.onnx", mix, _Unreadable(), calibration_cache=cache)
    quantize.apply_precisions(source, tmp_path / "fresh.onnx", mix, calibration)  # no cache: calibrates

    cached, fresh = _initializers(tmp_path / "cached.onnx"), _initializers(tmp_path / "fresh.onnx")
    scales = [name for name in fresh if name.endswith("_scale")]
    assert len(scales) >= 2 * (len(nodes) - 1)  # activation and weight scales of every quantized layer
    assert cached.keys() == fresh.keys()
    for name, value in fresh.items():
        assert (cached[name] == value).all(), name


def test_a_different_model_gets_its_own_ranges(exported, tmp_path):
    source, nodes, calibration = exported
    cache = tmp_path / "ranges"
    mix = {node: "int8" for node in nodes}
    quantize.apply_precisions(source, tmp_path / "a.onnx", mix, calibration, calibration_cache=cache)
    # 4-bit layers change the model static int8 calibrates on, and so its ranges (the MLP's Gemm has no
    # 4-bit kernel here, so use int8-dynamic instead: built after static, it leaves the calibrated model alone)
    other = {node: "int8-dynamic" if i == len(nodes) - 1 else "int8" for i, node in enumerate(nodes)}
    quantize.apply_precisions(source, tmp_path / "b.onnx", other, _Unreadable(), calibration_cache=cache)
    assert len(list(cache.glob("*.json"))) == 1


def test_a_changed_weight_gets_its_own_ranges(exported, tmp_path):
    source, nodes, calibration = exported
    model = onnx.load(str(source))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))  # set aside when the cache key is hashed
    changed = numpy_helper.to_array(weight).copy()
    changed.flat[0] += 1.0
    weight.CopyFrom(numpy_helper.from_array(changed, weight.name))
    onnx.save(model, str(tmp_path / "changed.onnx"))
    cache = tmp_path / "ranges"
    mix = {node: "int8" for node in nodes}
    quantize.apply_precisions(source, tmp_path / "a.onnx", mix, calibration, calibration_cache=cache)
    quantize.apply_precisions(tmp_path / "changed.onnx", tmp_path / "b.onnx", mix, calibration, calibration_cache=cache)
    assert len(list(cache.glob("*.json"))) == 2


def test_shape_inference_that_leaves_the_weights_out_gives_the_models_onnx_and_ort_give(exported):
    from onnxruntime.quantization.quant_utils import (
        save_and_reload_model_with_shape_infer,
    )

    from tuner.build import shapes

    source, _, _ = exported
    model = onnx.load(str(source))
    assert sum(len(t.raw_data) >= 1024 for t in model.graph.initializer) >= 3  # weights to leave out
    assert not shapes.has_subgraphs(model.graph)

    inferred = shapes.infer_shapes(model)
    assert inferred is model and len(inferred.graph.value_info) > 0  # in place
    assert inferred.SerializeToString() == onnx.shape_inference.infer_shapes(onnx.load(str(source))).SerializeToString()
    reloaded = shapes.infer_shapes(onnx.load(str(source)), like_ort_reload=True)
    ort = save_and_reload_model_with_shape_infer(onnx.load(str(source)))
    assert reloaded.SerializeToString() == ort.SerializeToString()
    assert sum(t.HasField("data_location") for t in ort.graph.initializer) >= 3  # the set ORT wrote out, matched
    for tensor in model.graph.initializer:
        assert shapes.raw_size(tensor) == len(tensor.raw_data)


def test_shape_inference_on_a_model_with_a_subgraph_gives_the_model_onnx_gives():
    from onnx import TensorProto, helper
    from onnxruntime.quantization.quant_utils import (
        save_and_reload_model_with_shape_infer,
    )

    from tuner.build import shapes

    weight = numpy_helper.from_array(np.ones((16, 16), np.float32), "w")  # 1 KB: left out of inference
    branch = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert shapes.has_subgraphs(model.graph)
    expected = onnx.shape_inference.infer_shapes(model).SerializeToString()
    assert shapes.infer_shapes(model).SerializeToString() == expected
    reloaded = shapes.infer_shapes(model, like_ort_reload=True)
    assert reloaded.SerializeToString() == save_and_reload_model_with_shape_infer(model).SerializeToString()
