"""Per-layer precision in ONNX Runtime: 4-bit weight-only, static int8 QDQ, dynamic int8 and fp32 in one model.

`registry` holds the builders (one per precision kind, `register_precision_builder`); `apply` builds a model's
mix; `static`, `dynamic` and `int4` are the builders; `reuse` the caches that spare ORT's Python loops.
"""

from tuner.build.quantize import dynamic, int4, static  # noqa: F401  (each registers its builders)
from tuner.build.quantize.apply import apply_precisions
from tuner.build.quantize.registry import (
           _BUILDERS,
           BuildContext,
           PrecisionBuilder,
           _BatchReader,
           register_precision_builder,
)
from tuner.build.quantize.reuse import QUANTIZED_WEIGHTS, QuantizedWeights
from tuner.build.quantize.static import (
           CALIBRATED_OPS,
           activations_between,
           keep_float_inputs,
           static_ranges,
)

__all__ = ["_BUILDERS", "_BatchReader", "BuildContext", "CALIBRATED_OPS", "activations_between", "PrecisionBuilder", "QUANTIZED_WEIGHTS", "QuantizedWeights", "apply_precisions",
           "keep_float_inputs", "register_precision_builder", "static_ranges"]
