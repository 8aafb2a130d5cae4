"""torch -> ONNX with a dynamic batch axis (dynamo or TorchScript exporter), and the map from layer names to the
ONNX nodes they became."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from tuner.core.errors import ExportError, user_line_in_chain
from tuner.core.vocab import EXPORTERS

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")  # what static int8 quantizes
MAPPED_OPS = WEIGHTED_OPS + ("LSTM",)  # what a layer can become
TABLE_OP = "Gather"  # what an embedding becomes: a lookup in its table, the Gather's first input
# ONNX orders an LSTM's gates (input, output, forget, cell); torch (input, forget, cell, output).
_LSTM_GATES = (0, 3, 1, 2)


def export_onnx(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | Path,
                exporter: str = "dynamo", dynamic_axes: tuple[Mapping[int, str], ...] = ()) -> None:
    """Export with a dynamic batch axis (whatever the example batch), weights inside the file.

    ``dynamic_axes`` (`Task.dynamic_axes`): per input, further axes that stay dynamic, by name.
    ``exporter``: ``dynamo`` (torch.export) or ``torchscript`` (the tracer: it records the branch the example
    takes through data-dependent control flow). A failure raises ExportError naming the model, the exporter,
    the line of the model's code it stopped at, and what to try.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, but got {exporter!r}.")
    axes = tuple({0: "batch", **extra} for extra in dynamic_axes) or tuple({0: "batch"} for _ in example_inputs)
    # torch.export specializes dimensions of size 1: an example batch (or a dynamic length) of 1 would fix it at 1.
    inputs = tuple(_doubled(t, [a for a in named if a < t.dim()]) for t, named in zip(example_inputs, axes))
    try:
        with warnings.catch_warnings(), _quiet_fds():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            if exporter == "dynamo":
                _export_dynamo(model.eval(), inputs, path, axes)
            else:
                _export_torchscript(model.eval(), inputs, path, axes)
    except Exception as exc:
        raise ExportError(_failure_message(model, exporter, exc)) from exc


def _doubled(tensor: torch.Tensor, axes: list[int]) -> torch.Tensor:
    for axis in axes:
        if tensor.shape[axis] == 1:
            tensor = torch.cat([tensor, tensor], dim=axis)
    return tensor


def _export_dynamo(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path,
                   axes: tuple[Mapping[int, str], ...]) -> None:
    # a length may be 0 at run time (an empty KV cache); the batch may not
    dims = {name: torch.export.Dim(name, min=1 if name == "batch" else 0, max=4096 if name == "batch" else 65536)
            for named in axes for name in named.values()}
    per_input = [{axis: dims[name] for axis, name in named.items() if axis < t.dim()} for t, named in zip(inputs, axes)]
    params = inspect.signature(model.forward).parameters.values()
    fixed = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    if any(p.kind == p.VAR_POSITIONAL for p in params):  # forward(x, *cache): torch.export wants the rest as one
        dynamic_shapes = (*per_input[:fixed], tuple(per_input[fixed:]))
    else:
        dynamic_shapes = tuple(per_input)
    with _torchlib_registry_built_once():
        program = torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False)
    program.save(str(path), external_data=False)


_REGISTRIES: dict[object, object] = {}  # opset -> torch's aten->ONNX registry, built once per process


@contextlib.contextmanager
def _torchlib_registry_built_once():
    """The dynamo exporter rebuilds its aten->ONNX registry on every call (about a second: it parses hundreds of
    onnxscript functions), more than a small model's whole export. `tuner` exports many models per process with
    no custom ops, which leave the registry as built, so it builds it once. torch offers no public way to pass a
    registry in: this swaps its constructor during tuner's own exports only, and where torch's internals differ,
    exports build it each time as before."""
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        original = cls.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def reused(klass, opset_version=None):
        key = opset_version
        if key not in _REGISTRIES:
            _REGISTRIES[key] = build(klass) if opset_version is None else build(klass, opset_version)
        return _REGISTRIES[key]

    cls.from_torchlib = classmethod(reused)
    try:
        yield
    finally:
        cls.from_torchlib = original


def _export_torchscript(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path,
                        axes: tuple[Mapping[int, str], ...]) -> None:
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params[:len(inputs)]] + [f"input_{i}" for i in range(len(params), len(inputs))]
    with torch.no_grad():
        outputs = model(*inputs)
    n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    out_names = [f"output_{i}" for i in range(n_out)]
    # No constant folding: it would fold BatchNorm into Conv weights under new names (ORT fuses them itself).
    buffer = io.BytesIO()
    torch.onnx.export(model, inputs, buffer, dynamo=False, input_names=names, output_names=out_names,
                      dynamic_axes={**{name: dict(named) for name, named in zip(names, axes)},
                                    **{name: {0: "batch"} for name in out_names}}, opset_version=18,
                      do_constant_folding=False)
    exported = onnx.load_model_from_string(buffer.getvalue())
    fold_weight_transposes(exported.graph)
    onnx.save(exported, str(path))


def fold_weight_transposes(graph: onnx.GraphProto) -> int:
    """Replace each Transpose of a weight (an initializer nothing else reads) by the transposed weight.

    Without constant folding, the TorchScript exporter writes a Linear on 3-D inputs (every transformer
    layer) as ``MatMul(x, Transpose(W))``: a MatMul whose weight is computed, which ORT's quantizers leave in
    fp32 and ``map_layers`` cannot find. Folding only these transposes keeps the rest of the graph as exported.
    Returns how many were folded.
    """
    inits = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    kept, folded = [], []
    for node in graph.node:
        source = node.input[0] if node.op_type == "Transpose" and node.input else ""
        if source not in inits or readers[source] != 1 or source in outputs:
            kept.append(node)
            continue
        weight = numpy_helper.to_array(inits[source])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(weight.ndim))[::-1])
        graph.initializer.remove(inits.pop(source))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), node.output[0]))
        folded.append(source)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        inputs = [i for i in graph.input if i.name not in folded]  # (older exports list weights as inputs too)
        del graph.input[:]
        graph.input.extend(inputs)
    return len(folded)


def _failure_message(model: torch.nn.Module, exporter: str, exc: BaseException) -> str:
    where = user_line_in_chain(exc)
    summary = _exception_summary(exc)
    other = [e for e in EXPORTERS if e != exporter]
    hint = (f"if the model branches on tensor values, `exporter: {other[0]}` in the experiment traces the branch "
            "the example input takes" if exporter == "dynamo" else
            f"`exporter: {other[0]}` in the experiment uses torch.export instead")
    return (f"model {type(model).__name__}: the {exporter} exporter failed"
            + (f" at {where}" if where else "") + f": {summary}. Try: {hint}; or change the model's code there.")


def _exception_summary(exc: BaseException) -> str:
    """The root cause in one line: torch's exporter wraps it in pages of advice."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = " ".join(str(root).split("\n\n")[0].split())
    return f"{type(root).__name__}: {text[:300]}"


@contextlib.contextmanager
def _quiet_fds():
    """The exporter's constant folding prints to the process's stdout/stderr; keep them for real errors."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
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
    """The ONNX node a layer became: its name, op type (Conv, Gemm, MatMul, LSTM; Gather for an embedding) and
    weight initializer."""

    name: str
    op_type: str
    weight: str


def layer_weights(model: torch.nn.Module, layers: list[str]) -> dict[str, np.ndarray]:
    """Each layer's weight as the exported graph holds it (an LSTM's input weight in ONNX's gate order)."""
    modules = dict(model.named_modules())
    return {layer: _onnx_weight(modules[layer]) for layer in layers}


def _onnx_weight(module: torch.nn.Module) -> np.ndarray:
    if isinstance(module, torch.nn.LSTM):
        gates = module.weight_ih_l0.detach().cpu().numpy().reshape(4, module.hidden_size, -1)
        return gates[list(_LSTM_GATES)].reshape(1, 4 * module.hidden_size, -1)
    return module.weight.detach().cpu().numpy()


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(str(array.shape).encode() + array.tobytes()).hexdigest()


def map_layers(graph: onnx.ModelProto, weights: Mapping[str, np.ndarray], allow_missing: bool = False
               ) -> dict[str, LayerNode]:
    """Find each layer's Conv/Gemm/MatMul/LSTM node through its weight: by state-dict name, else by value.

    Exporters rename, fold and transpose weights. The dynamo exporter keeps ``<layer>.weight`` where the
    weight is used as is (also when an eval-mode BatchNorm was folded into it), but turns a Linear's
    weight on 3-D inputs into a transposed constant called ``val_57``; the TorchScript exporter names it
    ``onnx::MatMul_123``. Values, as is or transposed, identify those exactly.

    An embedding is found as the Gather that reads its table by name only (a head tied to the table holds the
    same values, transposed, in a MatMul).

    ``allow_missing``: leave out layers no node uses (the exporter drops modules whose output is unused,
    like a Hugging Face pooler under mean pooling) instead of raising.
    """
    inits = {init.name: init for init in graph.graph.initializer}
    by_name: dict[str, list[onnx.NodeProto]] = {}
    by_digest: dict[str, list[onnx.NodeProto]] = {}
    tables: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        if node.op_type in MAPPED_OPS and len(node.input) > 1 and node.input[1] in inits:
            by_name.setdefault(node.input[1], []).append(node)
            by_digest.setdefault(_digest(numpy_helper.to_array(inits[node.input[1]])), []).append(node)
        elif node.op_type == TABLE_OP and node.input and node.input[0] in inits:
            tables.setdefault(node.input[0], []).append(node)
    mapping: dict[str, LayerNode] = {}
    for layer, weight in weights.items():
        found = tables.get(f"{layer}.weight") or by_name.get(f"{layer}.weight") or (
            by_digest.get(_digest(weight), []) + (by_digest.get(_digest(weight.T), []) if weight.ndim == 2 else []))
        if not found and allow_missing:
            continue
        if not found:
            raise RuntimeError(f"layer {layer!r}: no Conv/Gemm/MatMul node in the exported graph uses its weight "
                               f"(shape {tuple(weight.shape)}); cannot control its precision.")
        if len(found) > 1:
            raise RuntimeError(f"layer {layer!r}: {len(found)} nodes use identical weights "
                               f"({', '.join(n.name for n in found)}); layers must have distinct weights.")
        weight_input = 0 if found[0].op_type == TABLE_OP else 1
        mapping[layer] = LayerNode(found[0].name, found[0].op_type, found[0].input[weight_input])
    taken: dict[str, str] = {}
    for layer, node in mapping.items():
        if node.name in taken:
            raise RuntimeError(f"layers {taken[node.name]!r} and {layer!r} have identical weights; "
                               "cannot tell their nodes apart.")
        taken[node.name] = layer
    return mapping


# The export cache keeps the most recently used pruned exports (one fp32 model each: 440 MB for a BERT-base-size
# encoder). Workers of one machine share it, so an export is evicted only once no build has used it for a while.
MAX_CACHED_EXPORTS = 4


EXPORT_IDLE_S = 300.0


def evict_exports(export_root: Path, keep: Path, limit: int = MAX_CACHED_EXPORTS, idle_s: float = EXPORT_IDLE_S
                  ) -> list[Path]:
    """Delete the least recently used exports beyond ``limit`` (``keep`` aside); returns those deleted."""
    now = time.time()
    entries = []
    for folder in export_root.iterdir() if export_root.is_dir() else ():
        if folder.name.startswith("."):  # being written
            continue
        try:
            entries.append(((folder / "layers.json").stat().st_mtime, folder))
        except FileNotFoundError:  # being written or removed by another worker
            continue
    entries.sort(reverse=True)
    evicted = []
    for used, folder in entries[limit:]:
        if folder != keep and now - used > idle_s:
            shutil.rmtree(folder, ignore_errors=True)
            evicted.append(folder)
    return evicted
