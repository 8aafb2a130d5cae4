"""torch -> ONNX with a dynamic batch axis, and the map from layer names to the ONNX nodes they became."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def export_onnx(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | Path) -> None:
    """Export with torch's dynamo exporter, batch axis dynamic, weights inside the file."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    with warnings.catch_warnings(), _quiet_fds():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model.eval(), example_inputs, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False
        )
    program.save(str(path), external_data=False)


@contextlib.contextmanager
def _quiet_fds():
    """The exporter's constant folding prints to the process's stdout/stderr; keep them for real errors."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()):
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@dataclass(frozen=True)
class LayerNode:
    """The ONNX node a layer became: its name, op type (Conv, Gemm or MatMul) and weight initializer."""

    name: str
    op_type: str
    weight: str


def layer_weights(model: torch.nn.Module, layers: list[str]) -> dict[str, np.ndarray]:
    modules = dict(model.named_modules())
    return {layer: modules[layer].weight.detach().cpu().numpy() for layer in layers}


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(str(array.shape).encode() + array.tobytes()).hexdigest()


def map_layers(graph: onnx.ModelProto, weights: Mapping[str, np.ndarray], allow_missing: bool = False
               ) -> dict[str, LayerNode]:
    """Find each layer's Conv/Gemm/MatMul node through its weight: by state-dict name, else by value.

    Exporters rename, fold and transpose weights. The dynamo exporter keeps ``<layer>.weight`` where the
    weight is used as is (also when an eval-mode BatchNorm was folded into it), but turns a Linear's
    weight on 3-D inputs into a transposed constant called ``val_57``; the TorchScript exporter names it
    ``onnx::MatMul_123``. Values, as is or transposed, identify those exactly.

    ``allow_missing``: leave out layers no node uses (the exporter drops modules whose output is unused,
    like a Hugging Face pooler under mean pooling) instead of raising.
    """
    inits = {init.name: init for init in graph.graph.initializer}
    by_name: dict[str, list[onnx.NodeProto]] = {}
    by_digest: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
            by_name.setdefault(node.input[1], []).append(node)
            by_digest.setdefault(_digest(numpy_helper.to_array(inits[node.input[1]])), []).append(node)
    mapping: dict[str, LayerNode] = {}
    for layer, weight in weights.items():
        found = by_name.get(f"{layer}.weight") or (
            by_digest.get(_digest(weight), []) + (by_digest.get(_digest(weight.T), []) if weight.ndim == 2 else []))
        if not found and allow_missing:
            continue
        if not found:
            raise RuntimeError(f"layer {layer!r}: no Conv/Gemm/MatMul node in the exported graph uses its weight "
                               f"(shape {tuple(weight.shape)}); cannot control its precision.")
        if len(found) > 1:
            raise RuntimeError(f"layer {layer!r}: {len(found)} nodes use identical weights "
                               f"({', '.join(n.name for n in found)}); layers must have distinct weights.")
        mapping[layer] = LayerNode(found[0].name, found[0].op_type, found[0].input[1])
    taken: dict[str, str] = {}
    for layer, node in mapping.items():
        if node.name in taken:
            raise RuntimeError(f"layers {taken[node.name]!r} and {layer!r} have identical weights; "
                               "cannot tell their nodes apart.")
        taken[node.name] = layer
    return mapping
