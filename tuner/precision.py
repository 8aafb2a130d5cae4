"""Per-layer precision choices, named after what ONNX Runtime really runs, and where each one applies.

=============  ===========================================  ====================  ===========================
choice         what is built                                ORT CPU kernel        offered for ONNX op types
=============  ===========================================  ====================  ===========================
fp32           nothing                                      Conv / MatMul / Gemm  Conv, Gemm, MatMul
int8           static QDQ: uint8 activations (calibrated),  QLinearConv,          Conv, Gemm, MatMul
               int8 per-channel weights                     QGemm, QLinearMatMul
int8-dynamic   ``quantize_dynamic``: int8 weights (one scale DynamicQuantizeMatMul MatMul
               per tensor, ORT's default), activations      / MatMulIntegerToFloat
               quantized at run time
int8-dynamic-pc  the same with one weight scale per output  DynamicQuantizeMatMul MatMul
               channel: same speed, far closer to fp32 on
               transformers (MiniLM: cosine 0.957 -> 0.993)
int4-b<N>      4-bit weight-only, block size N              MatMulNBits           MatMul
               (``MatMulNBitsQuantizer``, accuracy level 4)  (int8 compute)
=============  ===========================================  ====================  ===========================

Choices that ORT would run slower than fp32 on CPU are not offered: dynamic int8 on Conv becomes
ConvInteger, and 4-bit QDQ on Conv/Gemm runs as float after DequantizeLinear (see FACTS in the docs).
MatMulNBits rewrites MatMul only, so a Linear layer exported as Gemm (2-D input) cannot be 4-bit.
"""

from __future__ import annotations

import re

FP32 = "fp32"
INT8 = "int8"
INT8_DYNAMIC = "int8-dynamic"
INT8_DYNAMIC_PER_CHANNEL = "int8-dynamic-pc"
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
_INT4 = re.compile(r"int4-b(\d+)")

_OP_TYPES = {
    FP32: ("Conv", "Gemm", "MatMul"),
    INT8: ("Conv", "Gemm", "MatMul"),
    INT8_DYNAMIC: ("MatMul",),
    INT8_DYNAMIC_PER_CHANNEL: ("MatMul",),
}
INT4_OP_TYPES = ("MatMul",)


class PrecisionError(ValueError):
    """A precision name `tuner` cannot build."""


def check_precision(name: str) -> str:
    """Return ``name`` if it is a precision choice `tuner` can build, else raise PrecisionError."""
    if name in _OP_TYPES:
        return name
    match = _INT4.fullmatch(str(name))
    if match and int(match.group(1)) in INT4_BLOCK_SIZES:
        return name
    raise PrecisionError(
        f"precision {name!r} cannot be built; choose from {FP32!r}, {INT8!r} (static QDQ), {INT8_DYNAMIC!r} or "
        f"{INT8_DYNAMIC_PER_CHANNEL!r} (MatMul only) or 'int4-b<N>' (4-bit weight-only, MatMul only) with block "
        f"size N in {list(INT4_BLOCK_SIZES)}.")


def int4_block_size(name: str) -> int | None:
    match = _INT4.fullmatch(name)
    return int(match.group(1)) if match else None


def applies_to(name: str, op_type: str) -> bool:
    """Whether ``name`` can be built for a layer that became an ONNX ``op_type`` node."""
    ops = INT4_OP_TYPES if int4_block_size(name) else _OP_TYPES[name]
    return op_type in ops


def op_types_for(name: str) -> tuple[str, ...]:
    return INT4_OP_TYPES if int4_block_size(name) else _OP_TYPES[name]


def kind(name: str) -> str:
    """The kernel family a choice belongs to: fp32, int8, int8-dynamic or int4 (block size, granularity dropped)."""
    if int4_block_size(name):
        return "int4"
    return INT8_DYNAMIC if name == INT8_DYNAMIC_PER_CHANNEL else name
