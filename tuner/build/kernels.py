"""Which ORT kernel each layer really runs, read from the graph ORT optimized, and whether that matches the ask.

A layer is found in the optimized graph through its weight initializer: quantizers derive their names
from it (``<w>_quantized`` for int8, ``<w>_Q4`` or ``<w>_Q8`` for MatMulNBits), and float ops read ``<w>`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from tuner.core.candidate import Candidate
from tuner.core.precision import FP32, KINDS, kind_of
from tuner.core.vocab import OPT_LEVELS

_COMPUTE = set().union(*(k.kernels for k in KINDS.values()))
_SUFFIXES = ("_quantized", "_Q4", "_Q8")


def layer_kernels(optimized: onnx.ModelProto, weight_names: Mapping[str, str]) -> dict[str, str | None]:
    """Op type of the compute node that reads each layer's weight (None: no such node, e.g. NCHWc-reordered)."""
    by_weight = {w: layer for layer, w in weight_names.items()}
    kernels: dict[str, str | None] = {layer: None for layer in weight_names}
    for node in optimized.graph.node:
        if node.op_type not in _COMPUTE:
            continue
        for name in node.input:
            for suffix in _SUFFIXES:
                name = name.removesuffix(suffix)
            if name in by_weight:
                kernels[by_weight[name]] = node.op_type
    return kernels


def mismatches(kernels: Mapping[str, str | None], precision: Mapping[str, str]) -> list[str]:
    """Layers whose kernel contradicts their precision choice.

    A quantized layer must be read by a quantized kernel. A float layer may also be found by no compute
    node: at level ``all`` NCHWc reorders float Conv weights into new initializers.
    """
    wrong = []
    for layer, op in kernels.items():
        choice = precision.get(layer, FP32)
        want = kind_of(choice)
        if op is None and want.name != FP32:
            wrong.append(f"{layer} asked for {choice} but no quantized kernel reads its weight")
        elif op is not None and op not in want.kernels:
            wrong.append(f"{layer} asked for {choice} but ORT runs it as {op}")
    return wrong


def check_runnable(candidate: Candidate) -> None:
    """Combinations ORT cannot run as asked, refused before spending a build on them."""
    level = OPT_LEVELS.index(candidate.opt_level)
    for kind in KINDS.values():
        if kind.min_opt_level is None or level >= OPT_LEVELS.index(kind.min_opt_level):
            continue
        layers = [layer for layer, choice in candidate.precision if kind_of(choice) is kind]
        if layers:
            allowed = " or ".join(repr(x) for x in OPT_LEVELS[OPT_LEVELS.index(kind.min_opt_level):])
            raise ValueError(f"{kind.name} needs opt_level {allowed}: at {candidate.opt_level!r} "
                             f"{kind.min_opt_level_reason}, so {len(layers)} {kind.name} layer(s) would compute "
                             "in fp32.")


def check_nodes_survived(present: frozenset[tuple[str, str]], nodes: dict[str, list[str]],
                          fusions: tuple[str, ...]) -> None:
    """Every layer's node is still in the fused graph (``present``: its nodes), or its precision could not be set."""
    lost = [layer for layer, (node, op, _) in nodes.items() if (node, op) not in present]
    if lost:
        raise RuntimeError(f"transformer fusions {list(fusions)} removed the nodes of layers {lost[:5]}; "
                           "their precision can no longer be set.")
