"""The per-layer latency model: ORT profile events attributed to the right layers (on real optimized graphs with
synthetic durations, so nothing here depends on a timing), and predictions composed from layer costs."""

import json
from pathlib import Path

import onnx
import pytest
from conftest import SMALL_TASK_ARGS

from tuner.core.candidate import Candidate
from tuner.evaluate import EvalSettings, Evaluator
from tuner.search.latency_model import (
    LatencyModel,
    LayerCosts,
    PruneShape,
    attribute,
    layer_anchors,
    node_profile,
    profile_artifact,
)
from tuner.taskref import TaskRef

LAYERS = ("stem.0", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer2.conv1",
          "layer2.conv2", "layer2.shortcut.0", "layer3.conv1", "layer3.conv2", "layer3.shortcut.0", "fc")


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_task):
    """The digits CNN's fp32 and static-int8 artifacts, each with the graph ORT runs and a real profile."""
    ref = TaskRef("tuner.tasks.digits_cnn:make_task", SMALL_TASK_ARGS)
    evaluator = Evaluator(ref, EvalSettings(warmup=1, repeats=3), tmp_path_factory.mktemp("lm"), task=small_task)
    out = {}
    for name, candidate in {"fp32": Candidate(), "int8": Candidate(tuple((l, "int8") for l in LAYERS))}.items():
        artifact = evaluator.artifact_root / name
        evaluator.build(candidate, artifact, {})
        path = artifact / "model.onnx"
        profile, optimized = profile_artifact(path, evaluator.feeds(path), runs=3, warmup=1)
        out[name] = (profile, optimized, onnx.load(str(path)), evaluator.weight_names(candidate))
    return out


def synthetic_events(optimized, runs=2):
    """Profile events as ORT writes them, each node taking (its index + 1) microseconds; a warm-up run first
    with absurd durations that must not count."""
    events = [{"cat": "Session", "name": "model_run", "dur": 999}]
    for run in range(runs + 1):
        for i, node in enumerate(optimized.graph.node):
            events.append({"cat": "Node", "name": f"{node.name}_kernel_time", "dur": 10_000 if run == 0 else i + 1,
                           "args": {"op_name": node.op_type}})
            events.append({"cat": "Node", "name": f"{node.name}_fence_before", "dur": 5})
    return events


def test_a_real_profile_has_a_time_for_every_node_ort_ran(built):
    for profile, optimized, _, _ in built.values():
        assert set(profile.node_us) == {n.name for n in optimized.graph.node}
        assert all(us >= 0 for us in profile.node_us.values())


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_every_layer_gets_its_compute_node_and_the_glue_around_it(built, name):
    _, optimized, artifact, weights = built[name]
    profile = node_profile(synthetic_events(optimized), runs=2)
    assert profile.node_us[optimized.graph.node[0].name] == 1  # the warm-up run does not count
    layer_us, rest_us, rest_ops = attribute(profile, optimized, layer_anchors(artifact, weights), weights)
    assert set(layer_us) == set(LAYERS)  # NCHWc convs (fp32) and QLinearConv (int8) alike
    assert sum(layer_us.values()) + rest_us == pytest.approx(sum(profile.node_us.values()))
    index = {node.name: i + 1 for i, node in enumerate(optimized.graph.node)}
    compute = {"Conv", "QLinearConv", "Gemm", "QGemm"}
    # each compute node's time lands on exactly one layer, and no two layers share a compute node
    owners = {}
    for node in optimized.graph.node:
        if node.op_type in compute:
            hits = [layer for layer in LAYERS if layer_us[layer] >= index[node.name]]
            assert hits, node.name
            owners[node.name] = hits
    assert len(owners) == len(LAYERS)
    if name == "int8":
        # the input's QuantizeLinear (and the NHWC Transpose after it) belong to the first conv; the logits'
        # DequantizeLinear to the classifier; the residual QLinearAdd to the rest
        first = [n for n in optimized.graph.node if n.op_type == "QLinearConv"][0]
        lead = [n for n in optimized.graph.node[: index[first.name] - 1]]
        assert {n.op_type for n in lead} <= {"QuantizeLinear", "Transpose"}
        assert layer_us["stem.0"] >= sum(index[n.name] for n in lead) + index[first.name]
        last = optimized.graph.node[-1]
        assert last.op_type == "DequantizeLinear" and layer_us["fc"] >= index[last.name]
        assert "QLinearAdd" in rest_ops
    else:
        assert not {"Conv", "ReorderInput", "ReorderOutput"} & set(rest_ops)


def costs(layer_ms, rest, wall=None):
    return LayerCosts(layer_ms, rest, wall if wall is not None else sum(layer_ms.values()) + rest)


def test_predictions_compose_layer_costs_rests_configurations_and_pruning():
    fp32 = costs({"a": 4.0, "b": 2.0}, 1.0)
    int8 = costs({"a": 1.0, "b": 1.0}, 2.0)
    extended = costs({"a": 6.0, "b": 3.0}, 3.0)
    pruned = costs({"a": 1.0, "b": 1.0}, 1.0)  # group g (a's outputs, b's inputs) at ratio 0.5 keeps a half
    g = {"g": PruneShape(("a",), ("b",), {0.25: 0.75, 0.5: 0.5})}
    uniform8 = Candidate(precision=(("a", "int8"), ("b", "int8")))
    model = LatencyModel.fit([(Candidate(), fp32), (uniform8, int8),
                              (Candidate(opt_level="extended"), extended),
                              (Candidate(prune=(("g", 0.5),)), pruned)], g)
    assert model.predict(Candidate()) == pytest.approx(7.0)  # each reference is predicted as measured
    assert model.predict(uniform8) == pytest.approx(4.0)
    assert model.predict(Candidate(opt_level="extended")) == pytest.approx(12.0)
    # a mix: a int8, b fp32; the rest weighted by fp32 cost: (4 * 2.0 + 2 * 1.0) / 6
    assert model.predict(Candidate(precision=(("a", "int8"),))) == pytest.approx(1.0 + 2.0 + 10 / 6)
    # pruning: at the profiled point exactly, halfway between it and unpruned at ratio 0.25
    assert model.predict(Candidate(prune=(("g", 0.5),))) == pytest.approx(1.0 + 1.0 + 1.0)
    assert model.predict(Candidate(prune=(("g", 0.25),))) == pytest.approx(2.5 + 1.5 + 1.0)
    # int8 layers keep their cost under another opt level; the rest scales with that level's fp32 rest
    assert model.predict(Candidate(precision=(("a", "int8"), ("b", "int8")), opt_level="extended")) == \
        pytest.approx(2.0 + 2.0 * 3.0)
    with pytest.raises(ValueError, match="fp32 reference"):
        LatencyModel.fit([(uniform8, int8)])


def test_profile_events_round_trip_from_a_file(built, tmp_path):
    _, optimized, _, _ = built["int8"]
    path = Path(tmp_path / "profile.json")
    path.write_text(json.dumps(synthetic_events(optimized, runs=3)))
    profile = node_profile(json.loads(path.read_text()), runs=3)
    assert sorted(profile.node_us.values()) == list(range(1, len(optimized.graph.node) + 1))
    assert profile.op_types[optimized.graph.node[0].name] == optimized.graph.node[0].op_type


def test_a_fitted_model_round_trips_through_json():
    g = {"g": PruneShape(("a",), ("b",), {0.5: 0.5})}
    model = LatencyModel.fit([(Candidate(), costs({"a": 4.0, "b": 2.0}, 1.0)),
                              (Candidate(prune=(("g", 0.5),)), costs({"a": 1.0, "b": 1.0}, 1.0))], g)
    again = LatencyModel.from_dict(json.loads(json.dumps(model.to_dict())))
    for candidate in (Candidate(), Candidate(prune=(("g", 0.5),)), Candidate(precision=(("a", "int8"),))):
        assert again.predict(candidate) == pytest.approx(model.predict(candidate))


def test_the_check_line_says_when_there_was_nothing_to_check_the_model_on():
    from tuner.search.latency_check import LatencyModelCheck

    nothing = LatencyModelCheck(references=2, trials=0, median_error=float("nan"), p90_error=float("nan"),
                                rank_correlation=float("nan"), profile_s=4.1).line()
    assert "no completed trial beside the references" in nothing and "nan" not in nothing
    one = LatencyModelCheck(2, 1, 0.12, 0.12, float("nan"), 4.1).line()
    assert "on 1 trials: median error 12.0%" in one and "rank correlation n/a" in one and "nan" not in one
