"""Per-layer precision in ONNX Runtime: each node's kind built in one model, kinds in their build order."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from tuner.build.quantize.registry import _BUILDERS, BuildContext
from tuner.build.quantize.static import static_ranges
from tuner.core.precision import (
    INT8,
    parse,
)


def apply_precisions(
    src: str | Path,
    dst: str | Path,
    node_precision: Mapping[str, str],
    calibration: Sequence[Sequence[np.ndarray]],
    calibration_cache: str | Path | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Give every listed node its precision (see :mod:`tuner.core.precision`); unlisted nodes stay fp32.

    ``metadata``: the model properties ``dst`` gets (replacing any it had), set before its one save.

    ``calibration_cache``: a folder where static int8 keeps the activation ranges it calibrated, one file per
    model it calibrated on; a later build calibrating the same model (same bytes, so same ranges) reads them
    instead of running the calibration data again. It must be kept per calibration set.

    Static int8 is calibrated on ``src`` as given (the pruned fp32 export), before any kind rewrites it, so one
    calibration serves every mix built from that export, whichever of its layers are 4-bit.

    Kinds are built in their ``build_order``: 4-bit weight-only first (it only rewrites float MatMuls with
    constant weights), then static QDQ, then dynamic int8 (per-tensor, then per-channel weight scales).
    """
    by_choice: dict[str, list[str]] = {}
    for node, choice in node_precision.items():
        by_choice.setdefault(choice, []).append(node)
    model = onnx.load(str(src))
    context = BuildContext(tuple(i.name for i in model.graph.input), calibration, dict(node_precision),
                           Path(calibration_cache) if calibration_cache else None)
    with _quiet_root_logger():
        if any(parse(choice)[0].name == INT8 for choice in by_choice):
            context = replace(context, ranges=static_ranges(model, context, source=Path(src)))
        for choice in sorted(by_choice, key=lambda c: (parse(c)[0].build_order, c)):
            kind, block = parse(choice)
            model = _BUILDERS[kind.name](model, by_choice[choice], block, context)
    if metadata is not None:
        onnx.helper.set_model_props(model, dict(metadata))
    onnx.save(model, str(dst))


@contextmanager
def _quiet_root_logger():
    """ORT's quantizers log advice and per-node INFO lines through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
