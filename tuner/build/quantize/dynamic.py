"""Dynamic int8 (per tensor, per channel, 7-bit per channel): ORT's dynamic quantizer, on the model in memory."""

from __future__ import annotations

from contextlib import contextmanager

import onnx
from onnx import TensorProto
from onnxruntime.quantization import (
    QuantizationMode,
    QuantType,
    onnx_quantizer,
)
from onnxruntime.quantization.quant_utils import (
    add_infer_metadata,
    update_opset_version,
)

from tuner.build.quantize.registry import (
    BuildContext,
    PrecisionBuilder,
    register_precision_builder,
)
from tuner.build.quantize.reuse import _ReusingQuantizer
from tuner.build.shapes import infer_shapes
from tuner.core.precision import (
    INT8_DYNAMIC,
    INT8_DYNAMIC_PER_CHANNEL,
    INT8_DYNAMIC_PER_CHANNEL_7BIT,
    KINDS,
)

# extra_options of every dynamic int8 build
DYNAMIC_OPTIONS = {"DefaultTensorType": TensorProto.FLOAT}


def _int8_dynamic(kind: str, per_channel: bool, reduce_range: bool = False) -> PrecisionBuilder:
    """ORT's dynamic quantizer; ``reduce_range``: 7-bit weights. (ORT writes LSTM weights per channel whatever it
    is asked: LSTM is offered by the per-channel kind only.)

    It runs what `quantize_dynamic` runs (opset update, `ONNXQuantizer`, topological sort) on the model in
    memory. `quantize_dynamic` takes a file: the model was saved for it, shape-inferred file to file, loaded, and
    its output saved and loaded again, per kind (`experiments/bert_base/quantize_time.py`: a BERT-base mix of
    every int8 kind builds in 0.49x the time). `tests/test_transformer.py` checks that the result is, byte for
    byte, the model `quantize_dynamic` writes."""
    def build(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext
              ) -> onnx.ModelProto:
        # No shape inference first: for a dynamic build ONNXQuantizer infers shapes itself (after rewriting Gemm
        # to MatMul) and reads only its own; the metadata says the model went through it, as quantize_dynamic's does.
        add_infer_metadata(model)
        model = update_opset_version(model, QuantType.QInt8)
        # DefaultTensorType: ORT's contrib ops (SkipLayerNormalization, ...) carry no type inference.
        with _ort_reload_in_memory():
            quantizer = _ReusingQuantizer(model, per_channel, reduce_range, QuantizationMode.IntegerOps, False,
                                          QuantType.QInt8, QuantType.QUInt8, None, nodes, None,
                                          list(KINDS[kind].op_types), {**DYNAMIC_OPTIONS, "MatMulConstBOnly": True})
        quantizer.quantize_model()
        quantizer.model.topological_sort()
        return quantizer.model.model
    return build


register_precision_builder(INT8_DYNAMIC)(_int8_dynamic(INT8_DYNAMIC, per_channel=False))


register_precision_builder(INT8_DYNAMIC_PER_CHANNEL)(_int8_dynamic(INT8_DYNAMIC_PER_CHANNEL, per_channel=True))


register_precision_builder(INT8_DYNAMIC_PER_CHANNEL_7BIT)(
    _int8_dynamic(INT8_DYNAMIC_PER_CHANNEL_7BIT, per_channel=True, reduce_range=True))


@contextmanager
def _ort_reload_in_memory():
    """ONNXQuantizer's constructor saves the model, infers its shapes on the file and loads it back, to read the
    inferred types (0.35 s per dynamic kind on BERT-base); the same model comes from :func:`infer_shapes` without
    the file. The constructor reads the function from its module's namespace: it is swapped for the call."""
    original = onnx_quantizer.save_and_reload_model_with_shape_infer
    onnx_quantizer.save_and_reload_model_with_shape_infer = lambda model: infer_shapes(model, like_ort_reload=True)
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = original
