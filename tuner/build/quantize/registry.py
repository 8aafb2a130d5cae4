"""The precision builders' registry: one builder per precision kind, and what a build passes them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    TensorsData,
)

from tuner.core.precision import (
    FP32,
    KINDS,
    parse,
)


class _BatchReader(CalibrationDataReader):
    def __init__(self, input_names: Sequence[str], batches: Iterable[Sequence[np.ndarray]]):
        self._input_names = input_names
        self._batches = batches
        self._feeds = None  # read only when calibration runs (not when its ranges are cached)

    def get_next(self):
        if self._feeds is None:
            self._feeds = iter([dict(zip(self._input_names, batch)) for batch in self._batches])
        return next(self._feeds, None)


@dataclass(frozen=True)
class BuildContext:
    """What a precision builder may need beside the nodes it rewrites."""

    input_names: tuple[str, ...]
    calibration: Sequence[Sequence[np.ndarray]]
    node_precision: Mapping[str, str]  # every node's choice: builders must leave other kinds' nodes alone
    calibration_cache: Path | None = None  # folder of activation ranges, one file per calibrated model
    ranges: TensorsData | None = None  # static int8's, calibrated on the model apply_precisions was given

    def float_nodes(self) -> list[str]:
        """Nodes whose own op reads float activations (fp32 and dynamic int8)."""
        return [n for n, c in self.node_precision.items() if parse(c)[0].computes_in_float]


# (model, nodes of this choice, block size or None, context) -> the rewritten model
PrecisionBuilder = Callable[[onnx.ModelProto, list[str], "int | None", BuildContext], onnx.ModelProto]
_BUILDERS: dict[str, PrecisionBuilder] = {}


def register_precision_builder(kind: str) -> Callable[[PrecisionBuilder], PrecisionBuilder]:
    """Register the function that builds precision ``kind`` (a name in :data:`tuner.core.precision.KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"no precision kind {kind!r} in tuner.core.precision.KINDS; add its PrecisionKind first.")

    def register(builder: PrecisionBuilder) -> PrecisionBuilder:
        _BUILDERS[kind] = builder
        return builder
    return register


@register_precision_builder(FP32)
def _fp32(model: onnx.ModelProto, nodes: list[str], block: int | None, context: BuildContext) -> onnx.ModelProto:
    return model
