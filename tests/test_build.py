"""The artifact is what the candidate asked for, checked in the graph ORT really runs."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from conftest import SMALL_TASK_ARGS

from tuner.build.export import export_onnx, layer_weights, map_layers
from tuner.build.kernels import layer_kernels, mismatches
from tuner.build.layers import quantizable_layers
from tuner.build.prune import (
    prune,
    pruning_groups,
    recalibrate_batchnorm,
    remaining_channels,
)
from tuner.build.quantize import apply_precisions
from tuner.cli import _print_timings
from tuner.core.candidate import Candidate
from tuner.core.vocab import TRIAL_STAGES
from tuner.evaluate import EvalSettings, Evaluator
from tuner.measure.quality import score
from tuner.measure.runtime import RuntimeConfig, create_session, load_artifact
from tuner.taskref import TaskRef

# Builds of the example CNN (trained first): seconds each. The fast suite builds a small MLP instead
# (tests/test_executors.py, tests/test_study_loop.py).
pytestmark = pytest.mark.slow

FP32_LAYERS = {"layer1.0.conv1", "layer2.conv2", "fc"}


def optimized_graph(model_path, level, tmp_path):
    out = tmp_path / f"optimized_{level}.onnx"
    create_session(model_path, level, optimized_model_path=str(out))
    return onnx.load(str(out)).graph


@pytest.fixture(scope="module")
def mixed_artifact(small_task, tmp_path_factory):
    """int8 everywhere except FP32_LAYERS, quantized exactly as the evaluator does it."""
    tmp = tmp_path_factory.mktemp("mixed")
    export_onnx(small_task.model, small_task.example_inputs, tmp / "fp32.onnx")
    layers = quantizable_layers(small_task.model)
    nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(small_task.model, layers))
    calibration = [[t.numpy() for t in batch] for batch in small_task.calibration_inputs]
    apply_precisions(tmp / "fp32.onnx", tmp / "model.onnx",
                     {nodes[n].name: ("fp32" if n in FP32_LAYERS else "int8") for n in layers}, calibration)
    return tmp, layers


def test_every_layer_maps_to_one_onnx_node(mixed_artifact, small_task):
    tmp, layers = mixed_artifact
    nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(small_task.model, layers))
    assert set(nodes) == set(layers)
    assert len({n.name for n in nodes.values()}) == len(layers)
    assert nodes["fc"].op_type == "Gemm" and nodes["stem.0"].op_type == "Conv"
    # BatchNorm is folded into the convolutions at export: quantization sees the folded weights.
    assert not [n for n in onnx.load(str(tmp / "fp32.onnx")).graph.node if n.op_type == "BatchNormalization"]


def test_layer_kernels_read_from_the_optimized_graph(mixed_artifact, small_task, tmp_path):
    tmp, layers = mixed_artifact
    nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(small_task.model, layers))
    graph = optimized_graph(tmp / "model.onnx", "extended", tmp_path)
    kernels = layer_kernels(onnx.ModelProto(graph=graph), {n: nodes[n].weight for n in layers})
    precision = {n: ("fp32" if n in FP32_LAYERS else "int8") for n in layers}
    assert {kernels[n] for n in FP32_LAYERS} <= {"Conv", "FusedConv", "Gemm", "FusedGemm"}
    assert {kernels[n] for n in layers if n not in FP32_LAYERS} == {"QLinearConv"}
    assert mismatches(kernels, precision) == []
    # the same graph contradicts a candidate that wanted the fp32 layers in int8
    wrong = mismatches(kernels, {n: "int8" for n in layers})
    assert len(wrong) == len(FP32_LAYERS) and "layer2.conv2 asked for int8 but ORT runs it as" in " ".join(wrong)


def test_int8_layers_run_as_qlinear_and_fp32_layers_as_float(mixed_artifact, tmp_path):
    tmp, layers = mixed_artifact
    graph = optimized_graph(tmp / "model.onnx", "extended", tmp_path)
    int8_weights = {n.input[3] for n in graph.node if n.op_type in ("QLinearConv", "QGemm")}
    float_weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "FusedConv", "FusedGemm")}
    for layer in layers:
        if layer in FP32_LAYERS:
            assert f"{layer}.weight" in float_weights, f"{layer} should run as a float op"
        else:
            assert f"{layer}.weight_quantized" in int8_weights, f"{layer} should run as QLinearConv/QGemm"


def test_residual_adds_between_int8_layers_run_in_int8_and_those_fed_by_a_float_layer_stay_float(
        mixed_artifact, small_task, tmp_path):
    tmp, layers = mixed_artifact
    fp32_graph = onnx.load(str(tmp / "fp32.onnx")).graph
    adds = [n for n in fp32_graph.node if n.op_type == "Add"]
    producer = {out: n for n in fp32_graph.node for out in n.output}
    nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(small_task.model, layers))
    float_convs = {nodes[name].name for name in FP32_LAYERS}
    fed_by_float = [a for a in adds if any(producer[i].name in float_convs for i in a.input)]
    assert len(adds) == 4 and len(fed_by_float) == 1  # layer2.conv2's residual Add
    graph = optimized_graph(tmp / "model.onnx", "extended", tmp_path)
    ops = [n.op_type for n in graph.node]
    assert ops.count("QLinearAdd") == 3 and ops.count("Add") == 1

    calibration = [[t.numpy() for t in batch] for batch in small_task.calibration_inputs]
    apply_precisions(tmp / "fp32.onnx", tmp_path / "int8.onnx", {nodes[n].name: "int8" for n in layers}, calibration)
    uniform = [n.op_type for n in optimized_graph(tmp_path / "int8.onnx", "extended", tmp_path).node]
    assert uniform.count("QLinearAdd") == 4 and "Add" not in uniform and "Relu" not in uniform
    # the input's QuantizeLinear, and the pooled features' (ReduceMean has no uint8 kernel) on their way to fc
    assert uniform.count("QuantizeLinear") == uniform.count("DequantizeLinear") == 2


def test_kernel_counts_at_level_all(mixed_artifact, tmp_path):
    tmp, layers = mixed_artifact
    graph = optimized_graph(tmp / "model.onnx", "all", tmp_path)
    ops = [n.op_type for n in graph.node]
    n_conv_fp32 = len([layer for layer in FP32_LAYERS if layer != "fc"])
    assert ops.count("QLinearConv") == len(layers) - len(FP32_LAYERS)
    assert ops.count("Conv") == n_conv_fp32  # NCHWc float convs keep the Conv op type
    assert "QGemm" not in ops


def test_without_the_float_input_rewrite_ort_would_quantize_fp32_layers(small_task, tmp_path):
    """Guards the reason `keep_float_inputs` exists: ORT's WeightBiasQuantization."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from tuner.build.quantize import _BatchReader

    export_onnx(small_task.model, small_task.example_inputs, tmp_path / "fp32.onnx")
    layers = quantizable_layers(small_task.model)
    nodes = {k: v.name for k, v in map_layers(onnx.load(str(tmp_path / "fp32.onnx")),
                                              layer_weights(small_task.model, layers)).items()}
    calibration = [[t.numpy() for t in batch] for batch in small_task.calibration_inputs]
    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "plain.onnx"), _BatchReader(["x"], calibration),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, nodes_to_exclude=[nodes["layer1.0.conv1"]])
    graph = optimized_graph(tmp_path / "plain.onnx", "extended", tmp_path)
    float_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    assert "layer1.0.conv1.weight" not in float_weights  # ORT turned the excluded layer into int8


def test_pruned_layers_have_expected_channels_and_still_score(small_task, tmp_path):
    groups = {g.name: g for g in pruning_groups(small_task.model, small_task.example_inputs, ["fc"])}
    ratios = {"layer2.conv2+layer2.shortcut.0": 0.25, "layer3.conv1": 0.5}
    model = prune(small_task.model, small_task.example_inputs, ratios, ["fc"], round_to=8)
    modules = dict(model.named_modules())
    for name, group in groups.items():
        expected = remaining_channels(group.channels, ratios.get(name, 0.0), 8)
        for member in group.members:
            assert modules[member].out_channels == expected, member
    assert modules["layer2.shortcut.0"].out_channels == 24 and modules["layer3.conv1"].out_channels == 32
    assert modules["layer3.conv1"].in_channels == 24  # consumers shrink with their producers
    assert modules["layer3.conv2"].in_channels == 32
    assert dict(small_task.model.named_modules())["layer3.conv1"].out_channels == 64  # original untouched

    x = torch.from_numpy(small_task.evaluation.inputs[0])
    with torch.no_grad():
        before = small_task.evaluation.metric(model(x).numpy())
        recalibrate_batchnorm(model, small_task.calibration_inputs)
        after = small_task.evaluation.metric(model(x).numpy())
    assert after > before
    assert after > 0.9

    export_onnx(model, small_task.example_inputs, tmp_path / "pruned.onnx")
    inits = {i.name: tuple(i.dims) for i in onnx.load(str(tmp_path / "pruned.onnx")).graph.initializer}
    assert inits["layer2.conv2.weight"][0] == 24 and inits["layer3.conv1.weight"][:2] == (32, 24)


def test_evaluator_builds_cached_artifact_and_reproduces_metric(small_task, tmp_path):
    ref = TaskRef("tuner.tasks.digits_cnn:make_task", SMALL_TASK_ARGS)
    evaluator = Evaluator(ref, EvalSettings(repeats=5, warmup=1), tmp_path)
    layers = quantizable_layers(small_task.model)
    cand = Candidate(precision=tuple((n, "int8") for n in layers), prune=(("layer3.conv1", 0.25),),
                     opt_level="all", disabled_optimizers=("ConvActivationFusion",))
    first = evaluator.evaluate(cand)
    assert first.state == "COMPLETE", first.error
    assert not first.cached_build and not first.cached_export and first.timings["export"] > 0
    second = evaluator.evaluate(cand.to_dict())
    assert second.cached_build and "export" not in second.timings
    assert second.key == first.key and second.metric == first.metric
    assert first.latency is not None and first.latency.repeats == 5  # timed as configured (values not asserted)
    # same pruning, other precision: the pruned export is reused
    third = evaluator.evaluate(Candidate(precision=(("fc", "int8"),), prune=(("layer3.conv1", 0.25),)))
    assert third.state == "COMPLETE" and third.cached_export and "export" not in third.timings
    # a fresh session on the file alone, configured from its metadata, gives the same metric, bit for bit
    model_path = tmp_path / first.key / "model.onnx"
    assert RuntimeConfig.of_file(model_path) == RuntimeConfig("all", ("ConvActivationFusion",))
    assert score(load_artifact(model_path), small_task.evaluation) == first.metric
    record = json.loads((tmp_path / first.key / "candidate.json").read_text())
    assert set(record["kernels"].values()) == {"QLinearConv", "QGemm"}


def test_a_candidate_that_cannot_build_is_a_fail_with_reason(tmp_path):
    ref = TaskRef("tuner.tasks.digits_cnn:make_task", SMALL_TASK_ARGS)
    evaluator = Evaluator(ref, EvalSettings(repeats=5, warmup=1), tmp_path)
    outcome = evaluator.evaluate(Candidate(prune=(("no.such.group", 0.5),)))
    assert outcome.state == "FAIL"
    assert "build failed" in outcome.error and "no.such.group" in outcome.error
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no half-written artifact left


def test_latency_is_measured_at_the_configured_batch_size(small_task, mixed_artifact):
    from tuner.measure.latency import latency_feeds, measure_latency

    feeds = latency_feeds(small_task, ["x"], 4)
    assert feeds["x"].shape == (4, 1, 32, 32)
    tmp, _ = mixed_artifact
    stats = measure_latency(create_session(tmp / "model.onnx", "all"), feeds, warmup=1, repeats=7)
    assert stats.repeats == 7  # the configured repeats were taken (timed values are not asserted)
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency(create_session(tmp / "model.onnx", "all"), feeds, repeats=0)


def test_static_int8_below_extended_level_is_refused_before_building(tmp_path):
    ref = TaskRef("tuner.tasks.digits_cnn:make_task", SMALL_TASK_ARGS)
    evaluator = Evaluator(ref, EvalSettings(repeats=3, warmup=1), tmp_path)
    outcome = evaluator.evaluate(Candidate(precision=(("fc", "int8"),), opt_level="basic"))
    assert outcome.state == "FAIL" and "int8 needs opt_level 'extended' or 'all'" in outcome.error
    assert outcome.timings == {} and not (tmp_path / outcome.key).exists()  # nothing was built
    assert evaluator.evaluate(Candidate(opt_level="basic")).state == "COMPLETE"  # fp32 at basic is fine


def test_the_kernel_check_fails_a_layer_ort_runs_in_float(tmp_path, monkeypatch):
    """With the early refusal bypassed, the kernel check itself catches static int8 at level basic."""
    import tuner.evaluate

    monkeypatch.setattr(tuner.evaluate, "check_runnable", lambda candidate: None)
    ref = TaskRef("tuner.tasks.digits_cnn:make_task", SMALL_TASK_ARGS)
    evaluator = Evaluator(ref, EvalSettings(repeats=3, warmup=1), tmp_path)
    outcome = evaluator.evaluate(Candidate(precision=(("fc", "int8"), ("stem.0", "int8")), opt_level="basic"))
    assert outcome.state == "FAIL"
    assert "ORT does not run 2 layer(s) as asked" in outcome.error
    assert "fc asked for int8 but no quantized kernel reads its weight" in outcome.error


RATIOS = (("layer2.conv2+layer2.shortcut.0", 0.5), ("layer3.conv1", 0.5), ("layer1.0.conv1", 0.5))


def test_recovery_improves_the_pruned_model_and_its_cost_and_size_are_recorded(tmp_path, capsys):
    ref = TaskRef("tuner.tasks.digits_cnn:make_task", SMALL_TASK_ARGS)
    evaluator = Evaluator(ref, EvalSettings(repeats=3, warmup=1, distill_steps=60), tmp_path)
    outcomes = {method: evaluator.evaluate(Candidate(prune=RATIOS, recovery=method))
                for method in ("none", "batchnorm", "distill")}
    assert all(o.state == "COMPLETE" for o in outcomes.values()), {m: o.error for m, o in outcomes.items()}
    none, bn, distill = (outcomes[m].metric for m in ("none", "batchnorm", "distill"))
    assert bn > none and distill > none
    stats = outcomes["distill"].model_stats
    assert stats["distill_steps"] == 60 and stats["distill_loss_after"] < stats["distill_loss_before"]
    # each recovery is timed as its own stage (which takes longer is a timing, not asserted here)
    assert outcomes["distill"].timings["recover"] > 0 and outcomes["batchnorm"].timings["recover"] > 0
    assert "recover" not in outcomes["none"].timings
    # `tuner run`'s breakdown names every stage a trial timed, recovery included
    assert set(outcomes["distill"].timings) <= set(TRIAL_STAGES)
    _print_timings(SimpleNamespace(timings=[{**o.timings, "wall": sum(o.timings.values())} for o in outcomes.values()],
                                   live_front_s=[], latency_model=None, latency_check=None, failures={}))
    line = capsys.readouterr().out
    assert all(f" {stage} " in line for stage in outcomes["distill"].timings), line
    # the same pruned model whatever the recovery: same size, fewer MACs and parameters than unpruned
    assert 0.3 < stats["macs_ratio"] < 0.9 and 0.3 < stats["params_ratio"] < 0.9
    assert outcomes["none"].model_stats["macs_ratio"] == stats["macs_ratio"]
    unpruned = evaluator.evaluate(Candidate())
    assert unpruned.model_stats["macs_ratio"] == 1.0


def test_recovery_task_runs_the_tasks_own_finetune(tmp_path):
    ref = TaskRef("finetune_task.py:make_task", SMALL_TASK_ARGS, str(Path(__file__).parent))
    evaluator = Evaluator(ref, EvalSettings(repeats=3, warmup=1), tmp_path)
    task_outcome = evaluator.evaluate(Candidate(prune=RATIOS, recovery="task"))
    bn_outcome = evaluator.evaluate(Candidate(prune=RATIOS, recovery="batchnorm"))
    assert task_outcome.state == "COMPLETE", task_outcome.error
    assert sys.modules[evaluator.task.finetune.__module__].CALLS == ["DigitsResNet"]  # called once, on the model
    assert task_outcome.metric == bn_outcome.metric  # this finetune is a BatchNorm recalibration


def test_importance_criteria_rank_channels_differently(small_task):
    """Same ratio, same shapes; which channels survive depends on the criterion."""
    ratios = {"layer3.conv1": 0.5}
    kept = {}
    for importance in ("magnitude", "lamp", "fpgm", "bn_scale"):
        model = prune(small_task.model, small_task.example_inputs, ratios, ["fc"], 8, importance)
        conv = dict(model.named_modules())["layer3.conv1"]
        assert conv.out_channels == 32
        kept[importance] = conv.weight.detach().flatten(1).norm(dim=1).sort().values
    assert not torch.equal(kept["magnitude"], kept["bn_scale"])
    with pytest.raises(ValueError, match="importance must be one of"):
        prune(small_task.model, small_task.example_inputs, ratios, ["fc"], 8, "taylor")
