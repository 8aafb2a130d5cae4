"""4-bit weight-only: ORT's MatMulNBits quantizer."""

from __future__ import annotations

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from tuner.build.quantize.registry import BuildContext, register_precision_builder
from tuner.core.precision import (
    INT4,
)


@register_precision_builder(INT4)
def _int4(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext) -> onnx.ModelProto:
    # nodes_to_include only *adds* to the op types it quantizes: exclude everything else instead.
    chosen = set(nodes)
    others = [n.name for n in model.graph.node if n.name not in chosen]
    quantizer = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=others)
    quantizer.process()
    return quantizer.model.model
