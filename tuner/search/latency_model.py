"""A per-layer latency model read from ONNX Runtime's own profiler.

Each reference artifact (fp32, every uniform precision) is run with ORT's profiler on. Every node of the graph
ORT really executes (after its fusions: QLinearConv, NCHWc convs, DynamicQuantizeMatMul, ...) gets its median
kernel time, and is attributed to a layer:

* a compute node belongs to the layer whose weight it reads (``<w>``, ``<w>_quantized``, ``<w>_Q4``, ``<w>_Q8``), or, when
  ORT rewrote the weight (NCHWc reorders float convs), to the layer whose node or output it is named after;
* glue that exists for one layer's precision or layout belongs to it: a quantize/reorder-in node to the layer it
  feeds, a dequantize/reorder-out node to the layer that produced its input (shared glue is split evenly);
* everything else (norms, softmax, adds, the session's own overhead) is the reference's *rest*.

The attributed times are scaled so that each reference's layers plus rest equal its measured median latency.
A candidate's predicted latency is the sum of its layers' costs at their precision, each scaled by the share
of its weight pruning leaves, plus the rest of the references weighted by how much of the model runs at each
precision. Fusion-aware: a candidate at another opt level or with other transformer fusions takes its fp32
layers and its rest from an fp32 profile at that configuration, when one was taken.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx

from tuner.core.candidate import Candidate
from tuner.core.paths import MODEL
from tuner.core.precision import FP32

# Nodes that exist for a layer's precision or layout: attributed to the layer they feed, or came from.
_FEEDS_LAYER = {"QuantizeLinear", "DynamicQuantizeLinear", "ReorderInput", "Transpose", "Cast"}
_FROM_LAYER = {"DequantizeLinear", "ReorderOutput"}
_WEIGHT_SUFFIXES = ("_quantized", "_Q4", "_Q8", "_DequantizeLinear_Output", "_DequantizeLinear")
_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Gelu", "FastGelu", "Tanh"}
_NAME_SUFFIX = re.compile(r"(_nchwc|_token_\d+|_quant|_fused)+$")


@dataclass(frozen=True)
class NodeProfile:
    """Median kernel time (microseconds) of every node ORT ran, with its op type."""

    node_us: Mapping[str, float]
    op_types: Mapping[str, str]


@dataclass(frozen=True)
class LayerCosts:
    """One profiled artifact, split into layers and the rest, in milliseconds of its measured latency."""

    layer_ms: Mapping[str, float]
    rest_ms: float
    wall_ms: float
    unattributed: tuple[str, ...] = ()  # op types left in the rest (shown by `experiments/latency_model`)


def profile_artifact(model_path: str | Path, feeds: Mapping, threads: int = 1, runs: int = 30,
                     warmup: int = 5) -> tuple[NodeProfile, onnx.ModelProto]:
    """Run the artifact as it is deployed (its stamped runtime config) with ORT's profiler on; returns each
    node's median kernel time and the graph ORT optimized (whose node names the profile uses)."""
    import onnxruntime as ort

    from tuner.measure.latency import session_feeds
    from tuner.measure.runtime import RuntimeConfig, session_options

    config = RuntimeConfig.of_file(model_path)
    with tempfile.TemporaryDirectory(prefix="tuner-profile-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = session_options(config.opt_level, threads, str(optimized))
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(config.disabled_optimizers) or None)
        feeds = session_feeds(session, feeds)
        for _ in range(warmup):
            session.run(None, dict(feeds))
        # the profile holds session start-up and warm-up events too: keep only the last `runs` of each node
        for _ in range(runs):
            session.run(None, dict(feeds))
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(str(optimized), load_external_data=False)
    return node_profile(events, runs), graph


def node_profile(events: Sequence[Mapping], runs: int | None = None) -> NodeProfile:
    """Per-node median kernel time from the events of an ORT profile (``*_kernel_time``, category Node);
    ``runs``: only the last that many executions of each node count (the warm-up runs come first)."""
    durations: dict[str, list[float]] = {}
    op_types: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        durations.setdefault(node, []).append(float(event["dur"]))
        op_types[node] = event.get("args", {}).get("op_name", "")
    if runs:
        durations = {node: times[-runs:] for node, times in durations.items()}
    return NodeProfile({node: statistics.median(times) for node, times in durations.items()}, op_types)


def _strip_weight(name: str) -> str:
    for suffix in _WEIGHT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def layer_anchors(artifact: onnx.ModelProto, weights: Mapping[str, str]) -> dict[str, set[str]]:
    """Names ORT may give a layer's node after rewriting it: the artifact's node that reads the layer's weight,
    its outputs, and the outputs of the activations it may be fused with."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in artifact.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_weight = {w: layer for layer, w in weights.items()}
    dequantized = {}  # static QDQ: the weight is read through a DequantizeLinear
    for node in artifact.graph.node:
        if node.op_type == "DequantizeLinear" and _strip_weight(node.input[0]) in by_weight:
            dequantized[node.output[0]] = by_weight[_strip_weight(node.input[0])]
    anchors: dict[str, set[str]] = {}
    for node in artifact.graph.node:
        if node.op_type in _FEEDS_LAYER | _FROM_LAYER:
            continue
        layer = next((by_weight.get(_strip_weight(i)) or dequantized.get(i) for i in node.input[1:]
                      if by_weight.get(_strip_weight(i)) or dequantized.get(i)), None)
        if layer is None:
            continue
        names = anchors.setdefault(layer, set())
        names.add(node.name)
        out = node.output[0]
        while True:
            names.add(out)
            nxt = consumers.get(out, [])
            if len(nxt) != 1 or nxt[0].op_type not in _ACTIVATIONS:
                break
            out = nxt[0].output[0]
    return anchors


def attribute(profile: NodeProfile, optimized: onnx.ModelProto, anchors: Mapping[str, set[str]],
              weights: Mapping[str, str]) -> tuple[dict[str, float], float, list[str]]:
    """Split a profile into per-layer microseconds and the rest (see the module docstring)."""
    by_weight = {w: layer for layer, w in weights.items()}
    by_anchor = {name: layer for layer, names in anchors.items() for name in names}
    nodes = {node.name: node for node in optimized.graph.node}
    producer = {out: node for node in optimized.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in optimized.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    owner: dict[str, list[str]] = {}
    for node in optimized.graph.node:
        if node.op_type in _FEEDS_LAYER | _FROM_LAYER:
            continue
        layers = sorted({by_weight[_strip_weight(i)] for i in node.input if _strip_weight(i) in by_weight})
        if not layers:
            candidates = [node.name, _NAME_SUFFIX.sub("", node.name), *node.output]
            layers = sorted({by_anchor[n] for n in candidates if n in by_anchor})
        if layers:
            owner[node.name] = layers

    def walk(node: onnx.NodeProto, forward: bool, seen: set[str]) -> set[str]:
        if node.name in owner:
            return set(owner[node.name])
        if node.name in seen or node.op_type not in _FEEDS_LAYER | _FROM_LAYER:
            return set()
        seen.add(node.name)
        nxt = ([c for o in node.output for c in consumers.get(o, [])] if forward
               else [producer[i] for i in node.input[:1] if i in producer])
        found = [walk(n, forward, seen) for n in nxt]
        return set().union(*found) if found and all(found) else set()

    layer_us: dict[str, float] = {}
    rest_us, unattributed = 0.0, []
    for name, us in profile.node_us.items():
        node = nodes.get(name)
        layers = owner.get(name)
        if layers is None and node is not None and node.op_type in _FEEDS_LAYER | _FROM_LAYER:
            first = node.op_type not in _FROM_LAYER
            layers = sorted(walk(node, first, set()) or walk(node, not first, set())) or None
        if not layers:
            rest_us += us
            unattributed.append(profile.op_types.get(name, "?"))
            continue
        for layer in layers:
            layer_us[layer] = layer_us.get(layer, 0.0) + us / len(layers)
    return layer_us, rest_us, unattributed


def layer_costs(profile: NodeProfile, optimized: onnx.ModelProto, artifact: onnx.ModelProto,
                weights: Mapping[str, str], wall_ms: float) -> LayerCosts:
    """A profiled artifact in milliseconds of its measured latency ``wall_ms``: profiled kernel times are
    scaled by one factor so that layers + rest = wall (the session's overhead lands in the rest)."""
    layer_us, rest_us, unattributed = attribute(profile, optimized, layer_anchors(artifact, weights), weights)
    total_us = sum(layer_us.values()) + rest_us
    scale = wall_ms / (total_us / 1e3) if total_us > 0 else 0.0
    layer_ms = {layer: us / 1e3 * scale for layer, us in layer_us.items()}
    return LayerCosts(layer_ms, wall_ms - sum(layer_ms.values()), wall_ms, tuple(sorted(set(unattributed))))


def _config(candidate: Candidate) -> str:
    return json.dumps([candidate.opt_level, list(candidate.fusions), list(candidate.disabled_optimizers)])


@dataclass(frozen=True)
class PruneShape:
    """How pruning a group scales the layers it touches: members lose output channels, consumers inputs."""

    members: tuple[str, ...]
    consumers: tuple[str, ...]
    keep: Mapping[float, float]  # ratio -> fraction of channels (or whole heads) kept, as the build rounds it


@dataclass(frozen=True)
class LatencyModel:
    """Per-layer costs of each precision choice, the rest of each reference, and how pruning scales layers."""

    layer_ms: Mapping[str, Mapping[str, float]]  # layer -> choice -> ms at the reference configuration
    rest_ms: Mapping[str, float]  # choice -> rest of the uniform reference of that choice
    reference_config: str
    config_fp32: Mapping[str, LayerCosts] = field(default_factory=dict)  # config -> fp32 profile there
    prune: Mapping[str, PruneShape] = field(default_factory=dict)
    # layer -> choice -> (share of its weight kept, ms) in a reference pruned at every group's largest ratio.
    # A layer's cost is interpolated linearly in the share kept between that point and the unpruned layer: a
    # fixed cost per kernel plus a part proportional to its weight (blocked kernels make the rest jagged).
    pruned_ms: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)

    @classmethod
    def fit(cls, profiled: Iterable[tuple[Candidate, LayerCosts]], prune: Mapping[str, PruneShape] | None = None
            ) -> LatencyModel:
        """From profiled references: uniform precision candidates at one configuration, and optionally fp32
        candidates at other configurations (opt level, fusions)."""
        profiled = list(profiled)
        fp32_refs = [(c, costs) for c, costs in profiled if not c.quantized_layers and not c.is_pruned]
        if not fp32_refs:
            raise ValueError("the latency model needs the fp32 reference's profile.")
        reference_config = _config(fp32_refs[0][0])
        layer_ms: dict[str, dict[str, float]] = {}
        rest_ms: dict[str, float] = {}
        for candidate, costs in profiled:
            if _config(candidate) != reference_config or candidate.is_pruned:
                continue
            choices = dict(candidate.precision)
            counts: dict[str, int] = {}
            for layer in costs.layer_ms:
                counts[choices.get(layer, FP32)] = counts.get(choices.get(layer, FP32), 0) + 1
            uniform = max(counts, key=counts.get) if counts else FP32
            rest_ms[uniform] = costs.rest_ms
            # a layer's cost at a choice is read where its neighbours share it (the uniform reference of that
            # choice), not where it stayed fp32 among quantized layers
            for layer, ms in costs.layer_ms.items():
                if choices.get(layer, FP32) == uniform:
                    layer_ms.setdefault(layer, {})[uniform] = ms
        config_fp32 = {_config(c): costs for c, costs in fp32_refs}
        model = cls(layer_ms, rest_ms, reference_config, config_fp32, dict(prune or {}))
        pruned_ms: dict[str, dict[str, tuple[float, float]]] = {}
        for candidate, costs in profiled:
            if _config(candidate) != reference_config or not candidate.is_pruned:
                continue
            scale = model._scale(candidate)
            choices = dict(candidate.precision)
            for layer, ms in costs.layer_ms.items():
                keep = scale.get(layer, 1.0)
                if keep < 0.95:
                    pruned_ms.setdefault(layer, {})[choices.get(layer, FP32)] = (keep, ms)
        return replace(model, pruned_ms=pruned_ms)

    def _layer_ms(self, layer: str, choice: str, full_ms: float, keep: float) -> float:
        """A layer's cost with ``keep`` of its weight left: linear between the profiled pruned point and the
        unpruned cost; proportional to ``keep`` when no pruned profile was taken."""
        if keep >= 1.0:
            return full_ms
        point = self.pruned_ms.get(layer, {}).get(choice)
        if point is None:
            return full_ms * keep
        low_keep, low_ms = point
        return max(low_ms + (full_ms - low_ms) * (keep - low_keep) / (1.0 - low_keep), 0.0)

    def to_dict(self) -> dict:
        return {"layer_ms": self.layer_ms, "rest_ms": self.rest_ms, "reference_config": self.reference_config,
                "config_fp32": {k: asdict(v) for k, v in self.config_fp32.items()},
                "prune": {k: {"members": v.members, "consumers": v.consumers, "keep": list(v.keep.items())}
                          for k, v in self.prune.items()},
                "pruned_ms": self.pruned_ms}

    @classmethod
    def from_dict(cls, data: Mapping) -> LatencyModel:
        return cls(data["layer_ms"], data["rest_ms"], data["reference_config"],
                   {k: LayerCosts(v["layer_ms"], v["rest_ms"], v["wall_ms"], tuple(v.get("unattributed", ())))
                    for k, v in data.get("config_fp32", {}).items()},
                   {k: PruneShape(tuple(v["members"]), tuple(v["consumers"]), {float(r): f for r, f in v["keep"]})
                    for k, v in data.get("prune", {}).items()},
                   {layer: {c: tuple(p) for c, p in points.items()}
                    for layer, points in data.get("pruned_ms", {}).items()})

    def _scale(self, candidate: Candidate) -> dict[str, float]:
        """Share of each layer's weight that the candidate's pruning keeps (out channels x in channels)."""
        scale: dict[str, float] = {}
        for group, ratio in candidate.prune:
            shape = self.prune.get(group)
            if shape is None or ratio <= 0:
                continue
            keep = shape.keep.get(ratio, 1.0 - ratio)
            for layer in (*shape.members, *shape.consumers):
                scale[layer] = scale.get(layer, 1.0) * keep
        return scale

    def predict(self, candidate: Candidate) -> float:
        """Predicted median latency (ms) of the candidate's artifact, in the references' conditions."""
        choices = dict(candidate.precision)
        scale = self._scale(candidate)
        config = _config(candidate)
        fp32_here = self.config_fp32.get(config)
        fp32_ref = self.config_fp32[self.reference_config]
        total, weight, rest = 0.0, 0.0, 0.0
        for layer, costs in self.layer_ms.items():
            choice = choices.get(layer, FP32)
            ms = costs.get(choice, costs.get(FP32, 0.0))
            if choice == FP32 and fp32_here is not None:
                ms = fp32_here.layer_ms.get(layer, ms)
            total += self._layer_ms(layer, choice, ms, scale.get(layer, 1.0))
            share = costs.get(FP32, ms)  # the rest of each precision, weighted by how much of the model runs it
            rest += share * self.rest_ms.get(choice, self.rest_ms.get(FP32, 0.0))
            weight += share
        rest = rest / weight if weight else self.rest_ms.get(FP32, 0.0)
        if fp32_here is not None and fp32_ref.rest_ms > 0:
            rest *= fp32_here.rest_ms / fp32_ref.rest_ms
        return total + rest


def prune_shapes(groups: Mapping[str, object], choices: Mapping[str, Sequence[float]], round_to: int
                 ) -> dict[str, PruneShape]:
    """The PruneShape of each searched pruning group (``groups``: :class:`tuner.build.prune.PruningGroup`)."""
    shapes = {}
    for name, group in groups.items():
        keep = {float(r): group.remaining(r, round_to) / group.channels for r in choices.get(name, ())}
        shapes[name] = PruneShape(tuple(group.members), tuple(group.consumers), keep)
    return shapes


def artifact_costs(artifact_dir: str | Path, feeds: Mapping, wall_ms: float, threads: int = 1, runs: int = 30
                   ) -> LayerCosts:
    """Profile a built artifact (``model.onnx`` and its ``candidate.json``) and split it into layers and rest,
    in milliseconds of its measured latency ``wall_ms``."""
    from tuner.core.records import ArtifactRecord

    artifact_dir = Path(artifact_dir)
    model_path = artifact_dir / MODEL
    weights = ArtifactRecord.read(artifact_dir / "candidate.json").layer_weights
    if not weights:
        raise ValueError(f"{artifact_dir}: its candidate.json names no layer weights (built by an older tuner).")
    profile, optimized = profile_artifact(model_path, feeds, threads, runs)
    return layer_costs(profile, optimized, onnx.load(str(model_path), load_external_data=False), weights, wall_ms)


def reference_costs(evaluator, candidate: Candidate, wall_ms: float | None = None, runs: int = 30) -> LayerCosts:
    """Build (or reuse) the candidate's artifact with ``evaluator`` and profile it (see :func:`artifact_costs`);
    ``wall_ms`` default: timed now, as the study times artifacts."""
    from tuner.evaluate import time_artifact

    artifact = evaluator.artifact_root / candidate.key(evaluator.fingerprint)
    if not (artifact / MODEL).is_file():
        evaluator.build(candidate, artifact, {})
    feeds = evaluator.feeds(artifact / MODEL)
    if wall_ms is None:
        wall_ms = time_artifact(artifact / MODEL, feeds, evaluator.settings)[0].median_ms
    return artifact_costs(artifact, feeds, wall_ms, evaluator.settings.threads, runs)
