"""torch -> ONNX with a dynamic batch axis, and the map from layer names to ONNX nodes."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch


def export_onnx(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | Path) -> None:
    """Export with torch's dynamo exporter (weights keep their state-dict names), batch axis dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model.eval(), example_inputs, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False
        )
    program.save(str(path), external_data=False)


def layer_nodes(model: onnx.ModelProto, layers: list[str]) -> dict[str, str]:
    """ONNX node name of each layer, found through the layer's weight initializer (``<layer>.weight``).

    Node names from the exporter are generic; weight names are the state-dict names, so the mapping
    does not depend on how the exporter names nodes.
    """
    by_weight = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            by_weight.setdefault(node.input[1], node.name)
    mapping = {}
    for layer in layers:
        node = by_weight.get(f"{layer}.weight")
        if node is None:
            raise RuntimeError(f"layer {layer!r} has no Conv/Gemm/MatMul node reading '{layer}.weight' in the "
                               "exported graph; cannot control its precision.")
        mapping[layer] = node
    return mapping
