"""Static int8 (QDQ, per-channel weights): calibrated activation ranges, kept per export file, and ORT's static
quantizer on the model in memory."""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantType,
    TensorsData,
    calibrate,
    create_calibrator,
    load_tensors_data,
)
from onnxruntime.quantization.calibrate import save_tensors_data
from onnxruntime.quantization.quant_utils import (
    add_infer_metadata,
    update_opset_version,
)

from tuner.build.export import WEIGHTED_OPS
from tuner.build.quantize.registry import (
    BuildContext,
    _BatchReader,
    register_precision_builder,
)
from tuner.build.quantize.reuse import _ReusingQDQQuantizer
from tuner.build.shapes import has_subgraphs, infer_shapes, is_float_weight, skeleton
from tuner.core.precision import (
    INT8,
)

# Ops that carry activations from int8 layers to int8 layers. Left float, each is an island with DequantizeLinear
# before it and QuantizeLinear after (ResNet-50: 35 Q and 36 DQ around 16 residual Adds); quantized, ORT runs them
# as QLinearAdd, uint8 pooling, a Relu folded into its producer's output range. Only the first input of the
# ops after "Add", "Concat" carries data (the others are shapes, axes, bounds).
BETWEEN_OPS = ("Add", "Concat", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean",
               "Reshape", "Flatten")
CALIBRATED_OPS = WEIGHTED_OPS + BETWEEN_OPS


@register_precision_builder(INT8)
def _int8_static(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext
                 ) -> onnx.ModelProto:
    ranges = context.ranges if context.ranges is not None else static_ranges(model, context)
    model = _int8_static_from_ranges(model, nodes + activations_between(model, nodes), ranges)
    # Layers that must stay float are cut off from upstream DequantizeLinear (see `keep_float_inputs`).
    keep_float_inputs(model, context.float_nodes())
    return model


def activations_between(model: onnx.ModelProto, int8_nodes: Iterable[str]) -> list[str]:
    """The :data:`BETWEEN_OPS` nodes whose every data input comes from a node in ``int8_nodes`` or from another
    such node: what static int8 quantizes with those layers. An op fed by a float layer (or reading a constant,
    as a bias Add does) stays float, so a layer kept fp32 and its surroundings run as before."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    int8 = set(int8_nodes)  # once: an iterator would be spent after the first node
    quantized_outputs = {out for node in model.graph.node if node.name in int8 for out in node.output}
    between = []
    for node in model.graph.node:  # exported graphs are in topological order
        if node.op_type not in BETWEEN_OPS:
            continue
        data = [i for i in (node.input if node.op_type in ("Add", "Concat") else node.input[:1]) if i]
        if data and all(i in quantized_outputs and i not in constants for i in data):
            between.append(node.name)
            quantized_outputs.update(node.output)
    return between


def static_ranges(model: onnx.ModelProto, context: BuildContext, source: Path | None = None) -> TensorsData:
    """The activation ranges of ``model`` on the calibration data: from ``context.calibration_cache`` when they
    were calibrated before, else calibrated as `quantize_static` calibrates (ORT's MinMax calibrator, on every
    input and output of the CALIBRATED_OPS nodes, whichever of them a mix quantizes: the ranges depend only on the
    model) and kept there. ``source``: the file ``model`` was loaded from, unchanged since (its cache key is then
    remembered per file)."""
    cache = _calibration_file(model, context.calibration_cache, source)
    if cache is not None and cache.is_file():
        return load_tensors_data(cache)
    with tempfile.TemporaryDirectory() as tmp, _calibrator_loads_in_memory(model):
        calibrator = create_calibrator(Path(tmp, "unwritten.onnx"), list(CALIBRATED_OPS),  # (the load is swapped)
                                       augmented_model_path=f"{tmp}/augmented_model.onnx",
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(_BatchReader(context.input_names, context.calibration))
        ranges = calibrator.compute_data()
        del calibrator
    if cache is not None:  # written whole, then published (workers share the folder)
        cache.parent.mkdir(parents=True, exist_ok=True)
        scratch = cache.parent / f".{cache.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.json"
        try:
            save_tensors_data(ranges, scratch)
            os.replace(scratch, cache)
        finally:
            scratch.unlink(missing_ok=True)
    return ranges


@contextmanager
def _calibrator_loads_in_memory(model: onnx.ModelProto):
    """ORT's calibrator takes a file and loads it with shape inference, file to file (the model saved for it, then
    inferred, written and read again: about 3 s of a BERT-base calibration); it gets a copy of ``model`` inferred
    in memory instead, what that load returns. It reads the function from its module's namespace: it is swapped
    for the call."""
    def load(path: Path) -> onnx.ModelProto:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # the calibrator adds its ReduceMin/ReduceMax outputs to the model it loaded
        inferred = infer_shapes(copy)
        add_infer_metadata(inferred)
        return inferred

    original = calibrate.load_model_with_shape_infer
    calibrate.load_model_with_shape_infer = load
    try:
        yield
    finally:
        calibrate.load_model_with_shape_infer = original


def _int8_static_from_ranges(model: onnx.ModelProto, nodes: list[str], ranges: TensorsData) -> onnx.ModelProto:
    """What `quantize_static` runs once it has its ranges (shape inference, opset update, `QDQQuantizer`,
    topological sort), on the model in memory, with the arguments of `quantize_static(..., quant_format=QDQ,
    activation_type=QUInt8, weight_type=QInt8, per_channel=True, nodes_to_quantize=nodes,
    op_types_to_quantize=CALIBRATED_OPS)`; `tests/test_transformer.py` checks both give the same model."""
    model = infer_shapes(model)  # quantize_static infers on the file it is given, weights inline
    add_infer_metadata(model)
    model = update_opset_version(model, QuantType.QInt8, QuantType.QUInt8)
    quantizer = _ReusingQDQQuantizer(model, True, False, QuantType.QInt8, QuantType.QUInt8, ranges, nodes, [],
                                     list(CALIBRATED_OPS), {})
    quantizer.quantize_model()
    quantizer.model.topological_sort()
    return quantizer.model.model


def _calibration_file(model: onnx.ModelProto, folder: Path | None, source: Path | None) -> Path | None:
    """The cached ranges of ``model`` (loaded from ``source``), named by :func:`_model_digest`."""
    return None if folder is None else folder / f"{_model_digest(model, source)[:32]}.json"


_MODEL_DIGESTS: OrderedDict[tuple, str] = OrderedDict()  # a source file's identity -> its model's digest


def _model_digest(model: onnx.ModelProto, source: Path | None) -> str:
    """A hash of ``model``'s graph and of every weight's bytes, hashed as they are (serializing the whole model
    for the hash took 0.9 s on BERT-base); remembered per ``source`` file (path, inode, size, modification time),
    so a worker building many mixes from one export hashes it once."""
    identity = None
    if source is not None:
        stat = os.stat(source)
        identity = (str(Path(source).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if identity in _MODEL_DIGESTS:
            _MODEL_DIGESTS.move_to_end(identity)
            return _MODEL_DIGESTS[identity]
    digest = hashlib.sha256(" ".join(CALIBRATED_OPS).encode())  # ranges of other op types: another file
    if has_subgraphs(model.graph):
        digest.update(model.SerializeToString())
    else:
        digest.update(skeleton(model).SerializeToString())
        for tensor in model.graph.initializer:
            if is_float_weight(tensor):
                digest.update(tensor.name.encode())
                digest.update(tensor.raw_data)
    if identity is not None:
        _MODEL_DIGESTS[identity] = digest.hexdigest()
        while len(_MODEL_DIGESTS) > 64:
            _MODEL_DIGESTS.popitem(last=False)
    return digest.hexdigest()


def keep_float_inputs(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> None:
    """Make float Conv/Gemm/MatMul nodes read their activation through Cast/Sub/Mul instead of DequantizeLinear.

    ORT's WeightBiasQuantization transformer (optimization level >= basic) quantizes the float weights of
    any Conv/Gemm whose input comes straight from a DequantizeLinear, so a layer left float would silently
    run in int8. The arithmetic here is the same as DequantizeLinear's, so results do not change; only
    the pattern ORT rewrites is gone, in every session that loads the file.
    """
    fp32_nodes = set(fp32_nodes)
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {init.name: init for init in model.graph.initializer}
    new_nodes = []
    for node in model.graph.node:
        dq = producer.get(node.input[0]) if node.name in fp32_nodes and node.input else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            # Names must not collide with what later quantizers derive from the input name
            # (quantize_dynamic adds "<input>_scale" and "<input>_zero_point").
            base = f"{node.name}/tuner_float"
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
            zero_point = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else 0
            model.graph.initializer.extend([
                numpy_helper.from_array(np.asarray(scale, np.float32), f"{base}/dq_scale"),
                numpy_helper.from_array(np.asarray(zero_point, np.float32), f"{base}/dq_zero_point"),
            ])
            new_nodes += [
                helper.make_node("Cast", [dq.input[0]], [f"{base}/cast"], name=f"{base}/cast", to=TensorProto.FLOAT),
                helper.make_node("Sub", [f"{base}/cast", f"{base}/dq_zero_point"], [f"{base}/centered"],
                                 name=f"{base}/sub"),
                helper.make_node("Mul", [f"{base}/centered", f"{base}/dq_scale"], [f"{base}/input"],
                                 name=f"{base}/mul"),
            ]
            node.input[0] = f"{base}/input"
        new_nodes.append(node)
    # Drop DequantizeLinear nodes nobody reads any more.
    consumed = {i for n in new_nodes for i in n.input} | {o.name for o in model.graph.output}
    new_nodes = [n for n in new_nodes if n.op_type != "DequantizeLinear" or n.output[0] in consumed]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
