"""Per-layer precision choices: one registry entry per kind, named after what ONNX Runtime really runs.

=================  ===========================================  ====================  ======================
choice             what is built                                ORT CPU kernel        offered for op types
=================  ===========================================  ====================  ======================
fp32               nothing                                      Conv / MatMul / Gemm  Conv, Gemm, MatMul, LSTM,
                                                                                      Gather
int8               static QDQ: uint8 activations (calibrated),  QLinearConv,          Conv, Gemm, MatMul
                   int8 per-channel weights                     QGemm, QLinearMatMul
int8-dynamic       ``quantize_dynamic``: int8 weights (one      DynamicQuantizeMatMul MatMul
                   scale per tensor), activations quantized     / MatMulIntegerToFloat
                   at run time
int8-dynamic-pc    the same with one weight scale per output    DynamicQuantizeMatMul MatMul, LSTM
                   channel: same speed, far closer to fp32 on   / DynamicQuantize-
                   transformers (MiniLM: cosine 0.957 -> 0.993)  LSTM
                   (ORT quantizes LSTM weights per channel only)
int8-dynamic-pc7   per channel, 7-bit weights (ORT's            DynamicQuantizeMatMul MatMul
                   ``reduce_range``): ORT's docs advise it
                   where u8*s8 products overflow (CPUs without
                   VNNI), per channel above all; a pretrained
                   110M-parameter encoder went from cosine 0.05
                   (per channel) to 0.86
int4-b<N>          4-bit weight-only, block size N              MatMulNBits           MatMul, Gather
                   (``MatMulNBitsQuantizer``, accuracy level 4); (int8 compute);
                   an embedding's table in 4 bits, blocks of N   GatherBlockQuantized
                   along its rows (ORT's quantizer builds 4-bit
                   tables only)
int8-weight-b<N>   8-bit weight-only, block size N (the same    MatMulNBits, 8 bits   MatMul
                   quantizer): a decoder's weights read at      (int8 compute)
                   a quarter of fp32's bytes, activations
                   quantized per block of N, not per tensor
                   (SmolLM2-135M: perplexity +0.6%, where
                   per-channel dynamic int8 cost +61%)
=================  ===========================================  ====================  ======================

On PyTorch's own runtime (``runtime: torch``, :mod:`tuner.build.torch_runtime`): ``bf16``, ``fp16`` (weights and
compute in that float type) and ``fp8-e4m3`` (one scaled matmul, Linear only), offered on torch layer classes
(``Linear``, ``Conv2d``, ...) on devices that run them fast; TF32 is a whole-model switch there, not a kind.

Choices that ORT would run slower than fp32 on CPU are not offered: dynamic int8 on Conv becomes
ConvInteger, and 4-bit QDQ on Conv/Gemm runs as float after DequantizeLinear (see FACTS in the docs).
MatMulNBits rewrites MatMul only, so a Linear layer exported as Gemm (2-D input) cannot be 4-bit.

A kind is one :class:`PrecisionKind` in ``KINDS`` (what it applies to, which kernels prove it, how it is
drawn) plus one build handler registered for it in :mod:`tuner.build.quantize`. This module imports nothing
heavy: the search space, the CLI and the plots read it without ONNX Runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FP32 = "fp32"
INT8 = "int8"
INT8_DYNAMIC = "int8-dynamic"
INT8_DYNAMIC_PER_CHANNEL = "int8-dynamic-pc"
INT8_DYNAMIC_PER_CHANNEL_7BIT = "int8-dynamic-pc7"
INT4 = "int4"
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
INT8_WEIGHT = "int8-weight"
# PyTorch's own runtime (``runtime: torch``): its layers are torch modules, named by class, not ONNX op types
TORCH_LAYER_OPS = ("Linear", "Conv1d", "Conv2d", "Conv3d")
BF16, FP16, FP8_E4M3 = "bf16", "fp16", "fp8-e4m3"


@dataclass(frozen=True)
class PrecisionKind:
    """What one kind of precision choice is.

    name: the kind; a choice is the name itself or, for a parameterized kind, ``<name>-b<N>``.
    op_types: the ONNX op types a layer must have become for the kind to be built.
    kernels: the ORT kernels that prove a layer runs in this precision (read from the optimized graph).
    computes_in_float: the layer's own op reads float activations (so static int8 upstream must not feed it
        a DequantizeLinear that ORT would fold into an int8 kernel).
    build_order: kinds are applied to a model in this order (4-bit first: it rewrites float MatMuls only).
    fidelity_order: how far from fp32 the kind is, for an ordered encoding of the choices (the GP sampler's):
        a finer weight scale is closer (per-channel before per-tensor), static activation scales are further
        than dynamic ones, and 4-bit is furthest (its smaller blocks closer than its larger ones).
    color, summary_order: how the kind is drawn and listed.
    block_sizes: for a parameterized kind (``int4-b32``), the allowed parameter values.
    min_opt_level, min_opt_level_reason: candidates that use the kind at a weaker ORT level are refused.
    """

    name: str
    description: str
    op_types: tuple[str, ...]
    kernels: frozenset[str]
    color: str
    computes_in_float: bool
    build_order: int
    fidelity_order: int
    summary_order: int
    block_sizes: tuple[int, ...] = ()
    min_opt_level: str | None = None  # the weakest ORT level (tuner.core.vocab.OPT_LEVELS) that runs it as asked
    min_opt_level_reason: str = ""

    def __post_init__(self) -> None:
        if not self.op_types or not self.kernels:
            raise ValueError(f"precision kind {self.name!r} needs op_types and kernels.")


KINDS: dict[str, PrecisionKind] = {k.name: k for k in (
    PrecisionKind(FP32, "fp32", ("Conv", "Gemm", "MatMul", "LSTM", "Gather", *TORCH_LAYER_OPS),
                  frozenset({"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "LSTM", "Gather"}),
                  "#4c6ef5", computes_in_float=True, build_order=99, fidelity_order=0, summary_order=6),
    PrecisionKind(INT4, "'int4-b<N>' (4-bit weight-only, MatMul and embeddings)", ("MatMul", "Gather"),
                  frozenset({"MatMulNBits", "GatherBlockQuantized"}),
                  "#2b8a3e", computes_in_float=False, build_order=0, fidelity_order=5, summary_order=0,
                  block_sizes=INT4_BLOCK_SIZES),
    PrecisionKind(INT8_WEIGHT, "'int8-weight-b<N>' (8-bit weight-only, MatMul only)", ("MatMul",),
                  frozenset({"MatMulNBits"}), "#66a80f", computes_in_float=False, build_order=0, fidelity_order=1,
                  summary_order=5, block_sizes=INT4_BLOCK_SIZES),
    PrecisionKind(INT8, f"{INT8!r} (static QDQ)", ("Conv", "Gemm", "MatMul"),
                  frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat"}),
                  "#f59f00", computes_in_float=False, build_order=1, fidelity_order=4, summary_order=4,
                  min_opt_level="extended",
                  min_opt_level_reason="ORT runs QDQ layers as DequantizeLinear + float op (the QDQ -> QLinear "
                                       "fusion is an extended-level optimizer)"),
    PrecisionKind(INT8_DYNAMIC, f"{INT8_DYNAMIC!r} (MatMul only)", ("MatMul",),
                  frozenset({"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger"}),
                  "#e8590c", computes_in_float=True, build_order=2, fidelity_order=3, summary_order=3),
    PrecisionKind(INT8_DYNAMIC_PER_CHANNEL, f"{INT8_DYNAMIC_PER_CHANNEL!r} (MatMul, LSTM)", ("MatMul", "LSTM"),
                  frozenset({"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger",
                             "DynamicQuantizeLSTM"}),
                  "#d6336c", computes_in_float=True, build_order=3, fidelity_order=1, summary_order=2),
    PrecisionKind(INT8_DYNAMIC_PER_CHANNEL_7BIT, f"{INT8_DYNAMIC_PER_CHANNEL_7BIT!r} (MatMul only, 7-bit weights)",
                  ("MatMul",), frozenset({"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger"}),
                  "#ae3ec9", computes_in_float=True, build_order=4, fidelity_order=2, summary_order=1),
    # The torch runtime's kinds (tuner.build.torch_runtime builds them; `kernels` there: the module a layer
    # becomes). They apply to torch layer classes only, so a study on ONNX Runtime never offers them.
    PrecisionKind(BF16, f"{BF16!r} (torch runtime)", TORCH_LAYER_OPS, frozenset({"CastLayer", "EdgeCast"}),
                  "#0ca678", computes_in_float=True, build_order=5, fidelity_order=2, summary_order=5),
    PrecisionKind(FP16, f"{FP16!r} (torch runtime)", TORCH_LAYER_OPS, frozenset({"CastLayer", "EdgeCast"}),
                  "#1098ad", computes_in_float=True, build_order=5, fidelity_order=1, summary_order=4),
    PrecisionKind(FP8_E4M3, f"{FP8_E4M3!r} (torch runtime, Linear only)", ("Linear",), frozenset({"Fp8Linear"}),
                  "#7048e8", computes_in_float=False, build_order=5, fidelity_order=3, summary_order=3),
)}
_PARAMETERIZED = re.compile(r"([a-z0-9-]+?)-b(\d+)")


class PrecisionError(ValueError):
    """A precision name `tuner` cannot build."""


def parse(choice: str) -> tuple[PrecisionKind, int | None]:
    """The kind of a choice and its block size (None for kinds without one); PrecisionError if unknown."""
    spec = KINDS.get(str(choice))
    if spec is not None and not spec.block_sizes:
        return spec, None
    match = _PARAMETERIZED.fullmatch(str(choice))
    if match and match.group(1) in KINDS:
        spec = KINDS[match.group(1)]
        if int(match.group(2)) in spec.block_sizes:
            return spec, int(match.group(2))
    raise PrecisionError(f"precision {choice!r} cannot be built; choose from {_choices_text()}.")


def _choices_text() -> str:
    described = [k.description if k.name != FP32 else repr(FP32) for k in KINDS.values()]
    sizes = [f"{k.name} block size N in {list(k.block_sizes)}" for k in KINDS.values() if k.block_sizes]
    return ", ".join(described[:-1]) + f" or {described[-1]}" + (f"; {'; '.join(sizes)}" if sizes else "")


def check_precision(name: str) -> str:
    """Return ``name`` if it is a precision choice `tuner` can build, else raise PrecisionError."""
    parse(name)
    return name


def kind_of(choice: str) -> PrecisionKind:
    return parse(choice)[0]


def applies_to(choice: str, op_type: str) -> bool:
    """Whether ``choice`` can be built for a layer that became an ONNX ``op_type`` node."""
    return op_type in kind_of(choice).op_types


def op_types_for(choice: str) -> tuple[str, ...]:
    return kind_of(choice).op_types


def fidelity_rank(choice: str) -> tuple[int, int]:
    """A sort key: how far ``choice`` is from fp32 (``PrecisionKind.fidelity_order``, then the block size)."""
    kind, block = parse(choice)
    return kind.fidelity_order, block or 0


def family(choice: str | None) -> str | None:
    """The kind's name (``int4`` for ``int4-b32``): what plots colour and summaries count."""
    return None if choice is None else kind_of(choice).name
