"""Weight-only kinds (4 and 8 bits): ORT's MatMulNBits quantizer."""

from __future__ import annotations

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from tuner.build.quantize.registry import BuildContext, register_precision_builder
from tuner.core.precision import INT4, INT8_WEIGHT


def _weight_only(bits: int):
    def build(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext) -> onnx.ModelProto:
        # nodes_to_include only *adds* to the op types it quantizes: exclude everything else instead.
        chosen = set(nodes)
        others = [n.name for n in model.graph.node if n.name not in chosen]
        # an embedding table (Gather, 4 bits only) is quantized in blocks along its rows: what one lookup reads
        tables = bits == 4 and any(n.op_type == "Gather" for n in model.graph.node if n.name in chosen)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=4,
                                         nodes_to_exclude=others,
                                         **({"op_types_to_quantize": ("MatMul", "Gather"),
                                             "quant_axes": (("MatMul", 0), ("Gather", 1))} if tables else {}))
        quantizer.process()
        return quantizer.model.model

    return build


register_precision_builder(INT4)(_weight_only(4))
register_precision_builder(INT8_WEIGHT)(_weight_only(8))
