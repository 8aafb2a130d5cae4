"""ONNX Runtime static int8 quantization (QDQ) with per-layer fp32 exclusions that stay fp32 at run time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static


class _BatchReader(CalibrationDataReader):
    def __init__(self, input_names: Sequence[str], batches: Iterable[Sequence[np.ndarray]]):
        self._feeds = iter([dict(zip(input_names, batch)) for batch in batches])

    def get_next(self):
        return next(self._feeds, None)


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Sequence[Sequence[np.ndarray]],
    fp32_nodes: Sequence[str],
) -> None:
    """Static int8 QDQ: uint8 activations, int8 per-channel weights; ``fp32_nodes`` keep fp32 compute."""
    model = onnx.load(str(fp32_path))
    input_names = [i.name for i in model.graph.input]
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns through the root logger
    try:
        quantize_static(
            str(fp32_path),
            str(out_path),
            _BatchReader(input_names, calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=list(fp32_nodes),
        )
    finally:
        logging.getLogger().setLevel(root_level)
    quantized = onnx.load(str(out_path))
    keep_float_inputs(quantized, fp32_nodes)
    onnx.save(quantized, str(out_path))


def keep_float_inputs(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> None:
    """Make excluded Conv/Gemm nodes read their activation through Cast/Sub/Mul instead of DequantizeLinear.

    ORT's WeightBiasQuantization transformer (optimization level >= basic) quantizes the float weights of
    any Conv/Gemm whose input comes straight from a DequantizeLinear, so an "excluded" layer would silently
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
            prefix = f"{node.name}_float_input"
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
            zero_point = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else 0
            model.graph.initializer.extend([
                numpy_helper.from_array(np.asarray(scale, np.float32), f"{prefix}_scale"),
                numpy_helper.from_array(np.asarray(zero_point, np.float32), f"{prefix}_zero_point"),
            ])
            new_nodes += [
                helper.make_node("Cast", [dq.input[0]], [f"{prefix}_cast"], name=f"{prefix}_cast", to=TensorProto.FLOAT),
                helper.make_node("Sub", [f"{prefix}_cast", f"{prefix}_zero_point"], [f"{prefix}_centered"],
                                 name=f"{prefix}_sub"),
                helper.make_node("Mul", [f"{prefix}_centered", f"{prefix}_scale"], [prefix], name=f"{prefix}_mul"),
            ]
            node.input[0] = prefix
        new_nodes.append(node)
    # Drop DequantizeLinear nodes nobody reads any more.
    consumed = {i for n in new_nodes for i in n.input} | {o.name for o in model.graph.output}
    new_nodes = [n for n in new_nodes if n.op_type != "DequantizeLinear" or n.output[0] in consumed]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
