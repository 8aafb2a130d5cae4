"""Fusion choices: offline transformer fusions (``onnxruntime.transformers``) and ORT session optimizers.

Two kinds, applied at different times:

* *Transformer fusions* rewrite the fp32 ONNX file before quantization (SkipLayerNormalization,
  BiasGelu, ...). They must run first: their pattern matchers do not see through Q/DQ pairs.
* *Session optimizers* are ORT's graph transformers, run when a session loads the file. A candidate can
  disable some by name; ORT silently ignores names it does not know, so names are checked against the
  transformers the installed ORT really applies (read from its verbose log).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

# Fusions that keep every Linear's MatMul and its weight intact, so per-layer precision still applies.
TRANSFORMER_FUSIONS = ("gelu", "bias_gelu", "gelu_approximation", "layer_norm", "skip_layer_norm",
                       "bias_skip_layer_norm")
# Fusions that merge layers' weights into one node (q/k/v into Attention, embeddings into
# EmbedLayerNormalization): per-layer precision could no longer be honoured.
MERGING_FUSIONS = {"attention": "merges query/key/value into one Attention node",
                   "embed_layer_norm": "merges the embeddings into one EmbedLayerNormalization node"}


@dataclass(frozen=True)
class Fused:
    counts: dict[str, int]  # fused operators by type
    nodes: frozenset[tuple[str, str]]  # (name, op type) of every node of the fused graph


def apply_transformer_fusions(src: str | Path, dst: str | Path, fusions: list[str]) -> Fused:
    """Run ORT's BERT fusions named in ``fusions`` (others off) on ``src``, save the result to ``dst``; returns
    the fused-op counts and the fused graph's nodes (so that no caller loads ``dst`` again only to read them)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for name in vars(options):
        if name.startswith("enable_"):
            setattr(options, name, False)
    for fusion in fusions:
        setattr(options, f"enable_{fusion}", True)
    logging.disable(logging.WARNING)  # the optimizer logs every fusion at INFO through many loggers
    try:
        optimized = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                   optimization_options=options, only_onnxruntime=False)
        optimized.save_model_to_file(str(dst))
    finally:
        logging.disable(logging.NOTSET)
    return Fused({op: n for op, n in optimized.get_fused_operator_statistics().items() if n},
                 frozenset((n.name, n.op_type) for n in optimized.model.graph.node))


_PROBE = """
import onnxruntime as ort
from onnx import TensorProto, helper
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
options = ort.SessionOptions()
options.log_severity_level = 0
ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
"""


@functools.lru_cache(maxsize=1)
def session_optimizer_names() -> frozenset[str]:
    """Names of the graph transformers this ORT applies on CPU at ORT_ENABLE_ALL (cached per ORT version)."""
    cache = Path(os.environ.get("TUNER_CACHE_DIR", Path.home() / ".cache" / "tuner")) / "ort"
    path = cache / f"optimizers-{ort.__version__}.json"
    if path.is_file():
        return frozenset(json.loads(path.read_text()))
    # ORT logs from C++ to the process's stderr: a child process is the clean way to read it.
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    names = sorted(set(re.findall(r"Applying graph transformer (\w+)", result.stderr)))
    if not names:
        raise RuntimeError(f"could not read ORT's graph transformer names from its log: {result.stderr[-500:]}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(names))
    os.replace(tmp, path)
    return frozenset(names)
