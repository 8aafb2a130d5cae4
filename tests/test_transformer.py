"""Transformer encoders: layer names -> ONNX nodes, every precision kind in one model, fusions that compose."""

import collections
import json
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_bert
import torch
from conftest import SMALL_TASK_ARGS
from onnx import numpy_helper

from tuner.build.export import export_onnx, layer_weights, map_layers
from tuner.build.fusion import session_optimizer_names
from tuner.build.layers import layer_op_types, quantizable_layers
from tuner.core.candidate import Candidate
from tuner.evaluate import EvalSettings, Evaluator
from tuner.measure.runtime import load_artifact
from tuner.space import SearchSpace, load_space_file
from tuner.taskref import TaskRef

pytestmark = pytest.mark.slow  # builds of a BERT-style encoder, seconds each

TESTS = str(Path(__file__).parent)
KINDS = ("fp32", "int8", "int8-dynamic", "int4-b16", "int8-dynamic-pc")


@pytest.fixture(scope="module")
def task():
    return tiny_bert.make_task()


@pytest.fixture(scope="module")
def layers(task):
    return quantizable_layers(task.model)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    ref = TaskRef("tiny_bert.py:make_task", {}, TESTS)
    return Evaluator(ref, EvalSettings(repeats=3, warmup=1), tmp_path_factory.mktemp("bert-artifacts"))


def mixed(layers, **kwargs) -> Candidate:
    """Every precision kind in one model, each on two or three of the twelve layers."""
    return Candidate(precision=tuple((name, KINDS[i % len(KINDS)]) for i, name in enumerate(layers)), **kwargs)


def test_hf_module_names_map_to_matmul_nodes_with_either_exporter(task, layers, tmp_path):
    assert len(layers) == 12 and layers[0] == "encoder.encoder.layer.0.attention.self.query"
    weights = layer_weights(task.model, layers)
    export_onnx(task.model, task.example_inputs, tmp_path / "dynamo.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        torch.onnx.export(task.model, task.example_inputs, str(tmp_path / "torchscript.onnx"), dynamo=False,
                          input_names=["input_ids", "attention_mask", "token_type_ids"])
    for path in ("dynamo.onnx", "torchscript.onnx"):
        graph = onnx.load(str(tmp_path / path))
        nodes = map_layers(graph, weights)
        assert set(nodes) == set(layers), path
        assert {n.op_type for n in nodes.values()} == {"MatMul"}, path
        assert len({n.name for n in nodes.values()}) == 12, path  # one distinct node per layer
        inits = {i.name for i in graph.graph.initializer}
        # the dynamo exporter renames the transposed weights: names alone could not have found them
        if path == "dynamo.onnx":
            assert not any(f"{layer}.weight" in inits for layer in layers)


def test_tuners_torchscript_export_maps_and_quantizes_every_transformer_layer(task, layers, tmp_path):
    # Unfolded, the TorchScript exporter computes each Linear's weight (MatMul(x, Transpose(W))): no layer
    # would be found, and the quantizer would leave every one in fp32.
    export_onnx(task.model, task.example_inputs, tmp_path / "ts.onnx", exporter="torchscript")
    graph = onnx.load(str(tmp_path / "ts.onnx"))
    nodes = map_layers(graph, layer_weights(task.model, layers))
    assert set(nodes) == set(layers)
    inits = {i.name for i in graph.graph.initializer}
    assert all(n.weight in inits for n in nodes.values())
    from tuner.build.quantize import apply_precisions

    apply_precisions(tmp_path / "ts.onnx", tmp_path / "q.onnx", {n.name: "int8-dynamic" for n in nodes.values()}, [])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    assert ops["DynamicQuantizeLinear"] >= 1 and ops["MatMulInteger"] == len(layers)
    batch = {i.name: t.numpy() for i, t in zip(load_artifact(tmp_path / "ts.onnx", 1).get_inputs(),
                                                task.example_inputs)}
    with torch.no_grad():
        expected = task.model(*task.example_inputs).numpy()
    np.testing.assert_allclose(load_artifact(tmp_path / "ts.onnx", 1).run(None, batch)[0], expected, atol=1e-4)


def test_unused_modules_are_left_out_not_an_error(task, tmp_path):
    weights = layer_weights(task.model, quantizable_layers(task.model))
    weights["unused.pooler"] = torch.randn(8, 64).numpy()
    export_onnx(task.model, task.example_inputs, tmp_path / "m.onnx")
    with pytest.raises(RuntimeError, match="layer 'unused.pooler': no Conv/Gemm/MatMul node"):
        map_layers(onnx.load(str(tmp_path / "m.onnx")), weights)
    assert "unused.pooler" not in map_layers(onnx.load(str(tmp_path / "m.onnx")), weights, allow_missing=True)


def test_rules_address_ffn_outputs_and_one_layers_attention(task, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(r"""
        layers:
          - match: 're:.*layer\.\d+\.output\.dense'          # every FFN output layer
            precision: [fp32, int4-b32]
          - match: 're:.*layer\.1\.attention\..*'            # layer 1's attention
            precision: [int8-dynamic, int8]
          - match: 're:.*'
            precision: [fp32, int8]
    """))
    space = SearchSpace(load_space_file(path), layer_op_types(task.model, task.example_inputs), [])
    ffn_out = [n for n, c in space.precision_choices.items() if c == ("fp32", "int4-b32")]
    assert ffn_out == ["encoder.encoder.layer.0.output.dense", "encoder.encoder.layer.1.output.dense"]
    attention_1 = [n for n, c in space.precision_choices.items() if c == ("int8-dynamic", "int8")]
    assert attention_1 == [f"encoder.encoder.layer.1.attention.{p}" for p in
                           ("self.query", "self.key", "self.value", "output.dense")]
    assert [label for label, _ in space.references()] == ["fp32", "uniform int4-b32", "uniform int8-dynamic",
                                                         "uniform int8"]


@pytest.mark.parametrize("level", ["extended", "all"])
def test_every_precision_kind_in_one_model_runs_the_kernel_it_asked_for(evaluator, layers, level, tmp_path):
    candidate = mixed(layers, opt_level=level)
    outcome = evaluator.evaluate(candidate)
    assert outcome.state == "COMPLETE", outcome.error
    kernels = json.loads((evaluator.artifact_root / outcome.key / "candidate.json").read_text())["kernels"]
    expected = {"fp32": {"MatMul", "FusedMatMul", "Gemm"}, "int8": {"QLinearMatMul", "MatMulIntegerToFloat"},
                "int8-dynamic": {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, "int4-b16": {"MatMulNBits"}}
    expected["int8-dynamic-pc"] = expected["int8-dynamic"]
    for layer, choice in candidate.precision:
        assert kernels[layer] in expected[choice], (layer, choice, kernels[layer])
    # read the graph ORT really runs, independently of the evaluator's own check
    load_artifact(evaluator.artifact_root / outcome.key / "model.onnx", optimized_model_path=str(tmp_path / "o.onnx"))
    nodes = onnx.load(str(tmp_path / "o.onnx")).graph.node
    ops = collections.Counter(n.op_type for n in nodes)
    assert ops["MatMulNBits"] == 2 and ops["DynamicQuantizeMatMul"] == 4 and ops["QLinearMatMul"] == 3
    # per-channel dynamic layers carry one weight scale per output column, per-tensor ones a single scale
    inits = {i.name: i for i in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    scale_sizes = sorted(int(np.prod(inits[n.input[2]].dims)) for n in nodes if n.op_type == "DynamicQuantizeMatMul")
    assert scale_sizes[:2] == [1, 1] and min(scale_sizes[2:]) > 1
    block_sizes = {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    accuracy_levels = {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute
                       if a.name == "accuracy_level"}
    assert block_sizes == {16} and accuracy_levels == {4}
    assert outcome.metric > 0.9  # cosine to the fp32 embeddings


def test_transformer_fusions_are_applied_before_quantization_and_compose(evaluator, layers):
    plain = evaluator.evaluate(mixed(layers))
    fused = evaluator.evaluate(mixed(layers, fusions=("skip_layer_norm", "bias_gelu")))
    assert fused.state == "COMPLETE", fused.error
    assert fused.cached_export  # the fp32 export is shared; only fusion and quantization are redone
    record = json.loads((evaluator.artifact_root / fused.key / "candidate.json").read_text())
    assert record["fused_operators"]["SkipLayerNormalization"] == 4 and record["fused_operators"]["BiasGelu"] == 2
    graph = onnx.load(str(evaluator.artifact_root / fused.key / "model.onnx")).graph
    assert {"SkipLayerNormalization", "BiasGelu", "MatMulNBits", "DynamicQuantizeLinear"} <= {n.op_type for n in graph.node}
    assert abs(fused.metric - plain.metric) < 2e-3  # same arithmetic, fused


def test_session_optimizer_names_come_from_the_installed_ort():
    names = session_optimizer_names()
    assert {"NchwcTransformer", "ConstantFolding", "MatMulNBitsFusion", "WeightBiasQuantization"} <= names
    assert "NoSuchFusion" not in names


def test_a_disabled_optimizer_is_really_off_in_the_session(small_task, tmp_path):
    ref = TaskRef("tuner.tasks.digits_cnn:make_task", SMALL_TASK_ARGS)
    evaluator = Evaluator(ref, EvalSettings(repeats=3, warmup=1), tmp_path)
    domains = {}
    for disabled in ((), ("NchwcTransformer",)):
        outcome = evaluator.evaluate(Candidate(opt_level="all", disabled_optimizers=disabled))
        assert outcome.state == "COMPLETE", outcome.error
        out = tmp_path / f"opt{len(disabled)}.onnx"
        load_artifact(tmp_path / outcome.key / "model.onnx", optimized_model_path=str(out))
        domains[disabled] = {n.domain for n in onnx.load(str(out)).graph.node}
    assert "com.microsoft.nchwc" in domains[()]
    assert "com.microsoft.nchwc" not in domains[("NchwcTransformer",)]


def test_heads_and_ffn_units_are_pruned_as_whole_units_and_the_result_builds(task, evaluator, tmp_path):
    from tuner.build.prune import prune, pruning_groups

    outputs = [n for n, _ in task.model.named_modules() if n.endswith("output.dense")]
    groups = {g.name: g for g in pruning_groups(task.model, task.example_inputs, outputs)}
    qkv0 = "+".join(f"encoder.encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value"))
    qkv1 = qkv0.replace("layer.0", "layer.1")
    ffn0 = "encoder.encoder.layer.0.intermediate.dense"
    assert groups[qkv0].head_dim == 16 and groups[qkv0].unit == "heads" and groups[ffn0].unit == "channels"
    ratios = {qkv0: 0.5, qkv1: 0.25, ffn0: 0.5}
    model = prune(task.model, task.example_inputs, ratios, outputs)
    mods = dict(model.named_modules())
    layer0, layer1 = mods["encoder.encoder.layer.0.attention.self"], mods["encoder.encoder.layer.1.attention.self"]
    assert (layer0.num_attention_heads, layer1.num_attention_heads) == (2, 3)  # whole heads, head size kept
    assert layer0.query.out_features == layer0.key.out_features == layer0.value.out_features == 32
    assert mods["encoder.encoder.layer.0.attention.output.dense"].in_features == 32
    assert mods[ffn0].out_features == 64 and mods["encoder.encoder.layer.0.output.dense"].in_features == 64
    assert layer1.value.out_features == 48 and mods["encoder.encoder.layer.1.intermediate.dense"].out_features == 128
    # pruned, then quantized: the artifact has the smaller tensors and the int8 kernels
    candidate = Candidate(precision=tuple((n, "int8-dynamic-pc") for n in quantizable_layers(task.model)),
                          prune=tuple(ratios.items()), recovery="distill")
    outcome = evaluator.evaluate(candidate)
    assert outcome.state == "COMPLETE", outcome.error
    assert outcome.model_stats["params_ratio"] < 1 and outcome.model_stats["macs_ratio"] < 1
    record = json.loads((evaluator.artifact_root / outcome.key / "candidate.json").read_text())
    assert set(record["kernels"].values()) <= {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    graph = onnx.load(str(evaluator.artifact_root / outcome.key / "model.onnx")).graph
    weight_shapes = [tuple(i.dims) for i in graph.initializer if i.name.endswith("_quantized")]
    assert weight_shapes.count((64, 32)) == 3 and (64, 64) in weight_shapes and (32, 64) in weight_shapes
    assert outcome.metric > 0.95


def test_pruning_many_groups_at_once_equals_pruning_them_one_by_one(task):
    """prune() traces the model once for all groups; each group pruned alone (its own trace) must agree."""
    from tuner.build.prune import prune, pruning_groups

    outputs = [n for n, _ in task.model.named_modules() if n.endswith("output.dense")]
    groups = pruning_groups(task.model, task.example_inputs, outputs)
    heads = [g.name for g in groups if g.head_dim]
    channels = [g.name for g in groups if not g.head_dim]
    assert len(heads) >= 2 and len(channels) >= 2
    ratios = {heads[0]: 0.5, heads[1]: 0.25, channels[0]: 0.5, channels[1]: 0.25}
    together = prune(task.model, task.example_inputs, ratios, outputs)
    one_by_one = task.model
    for name, ratio in ratios.items():
        one_by_one = prune(one_by_one, task.example_inputs, {name: ratio}, outputs)
    a, b = together.state_dict(), one_by_one.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    assert a[f"{heads[0].split('+')[0]}.weight"].shape[0] < task.model.state_dict()[f"{heads[0].split('+')[0]}.weight"].shape[0]
    with torch.no_grad():
        torch.testing.assert_close(together(*task.example_inputs), one_by_one(*task.example_inputs))


def test_int8_dynamic_pc7_keeps_weights_within_7_bits_and_runs_dynamic_int8_kernels(evaluator, layers, tmp_path):
    """ORT's reduce_range: per-channel weights in [-64, 64]; plain per-channel ones use the full int8 range."""
    ranges = {}
    for choice in ("int8-dynamic-pc7", "int8-dynamic-pc"):
        outcome = evaluator.evaluate(Candidate(precision=tuple((name, choice) for name in layers)))
        assert outcome.state == "COMPLETE", outcome.error
        kernels = json.loads((evaluator.artifact_root / outcome.key / "candidate.json").read_text())["kernels"]
        assert set(kernels.values()) <= {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
        path = tmp_path / f"{choice}.onnx"
        load_artifact(evaluator.artifact_root / outcome.key / "model.onnx", optimized_model_path=str(path))
        graph = onnx.load(str(path)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        weights = [w for w in inits.values() if w.dtype == np.int8 and w.ndim == 2]  # the quantized weights
        assert len(weights) == len(layers)
        ranges[choice] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert ranges["int8-dynamic-pc7"] <= 64 < ranges["int8-dynamic-pc"]


@pytest.mark.parametrize("kind, per_channel, reduce_range", [("int8-dynamic", False, False),
                                                              ("int8-dynamic-pc7", True, True)])
def test_dynamic_int8_built_in_memory_is_the_model_quantize_dynamic_writes(task, layers, tmp_path, kind,
                                                                            per_channel, reduce_range):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tuner.build.quantize import _BUILDERS, QUANTIZED_WEIGHTS, BuildContext
    from tuner.build.quantize.dynamic import DYNAMIC_OPTIONS
    from tuner.core.precision import KINDS as PRECISION_KINDS

    export_onnx(task.model, task.example_inputs, tmp_path / "fp32.onnx")
    fp32 = onnx.load(str(tmp_path / "fp32.onnx"))
    nodes = map_layers(fp32, layer_weights(task.model, layers))
    chosen = [nodes[name].name for name in layers[::2]]  # every other layer: the rest stay float
    quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "ort.onnx", weight_type=QuantType.QInt8,
                     per_channel=per_channel, reduce_range=reduce_range, nodes_to_quantize=chosen,
                     op_types_to_quantize=list(PRECISION_KINDS[kind].op_types), extra_options=dict(DYNAMIC_OPTIONS))
    context = BuildContext(tuple(i.name for i in fp32.graph.input), [], {})
    QUANTIZED_WEIGHTS.clear()
    ours = _BUILDERS[kind](onnx.load(str(tmp_path / "fp32.onnx")), chosen, None, context)
    theirs = onnx.load(str(tmp_path / "ort.onnx"))
    assert sum(n.op_type == "DynamicQuantizeLinear" for n in ours.graph.node) > 0
    assert ours.SerializeToString() == theirs.SerializeToString()
    # Built again: per-channel weights come from what the first build quantized, and the model is the same.
    again = _BUILDERS[kind](onnx.load(str(tmp_path / "fp32.onnx")), chosen, None, context)
    assert again.SerializeToString() == theirs.SerializeToString()
    reused = len(chosen) if per_channel else 0
    assert (QUANTIZED_WEIGHTS.misses, QUANTIZED_WEIGHTS.hits) == (reused, reused)


def test_a_changed_weight_is_quantized_anew_and_the_oldest_entry_goes_when_the_cache_is_full(task, layers, tmp_path,
                                                                                              monkeypatch):
    import tuner.build.quantize as quantize

    export_onnx(task.model, task.example_inputs, tmp_path / "fp32.onnx")
    fp32 = onnx.load(str(tmp_path / "fp32.onnx"))
    node = map_layers(fp32, layer_weights(task.model, layers))[layers[0]]
    weight = next(i for i in fp32.graph.initializer if i.name == node.weight)
    array = numpy_helper.to_array(weight).copy()
    array[0, 0] += 1.0  # what pruning or another export would do: other values under the same name
    changed = onnx.load(str(tmp_path / "fp32.onnx"))
    next(i for i in changed.graph.initializer if i.name == weight.name).CopyFrom(
        numpy_helper.from_array(array, weight.name))
    # room for one int8 copy of the weight (a quarter of its fp32 bytes) and its scales, not two
    cache = quantize.QuantizedWeights(max_bytes=int(weight.ByteSize() * 0.4))
    monkeypatch.setattr(quantize.reuse, "QUANTIZED_WEIGHTS", cache)  # where the quantizers read it
    context = quantize.BuildContext(tuple(i.name for i in fp32.graph.input), [], {})

    def build(model):
        built = quantize._BUILDERS["int8-dynamic-pc"](onnx.load_from_string(model.SerializeToString()),
                                                      [node.name], None, context)
        return next(i for i in built.graph.initializer if i.name == weight.name + "_quantized").raw_data

    first, second = build(fp32), build(changed)
    assert first != second and (cache.misses, cache.hits) == (2, 0)
    assert build(changed) == second and cache.hits == 1
    assert build(fp32) == first and (cache.misses, cache.hits) == (3, 1)  # the first entry had to go
    assert 0 < cache._bytes <= cache.max_bytes


def test_static_int8_built_in_memory_is_the_model_quantize_static_writes_cold_or_from_what_it_cached(
        task, layers, tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    import tuner.build.quantize as quantize

    export_onnx(task.model, task.example_inputs, tmp_path / "fp32.onnx")
    nodes = map_layers(onnx.load(str(tmp_path / "fp32.onnx")), layer_weights(task.model, layers))
    choice = {nodes[name].name: ("int8" if i % 2 else "int8-dynamic") for i, name in enumerate(layers)}
    chosen = [node for node, c in choice.items() if c == "int8"]
    calibration = [[t.numpy() for t in batch] for batch in task.calibration_inputs]
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    context = quantize.BuildContext(inputs, calibration, choice, tmp_path / "ranges")
    quantize.QUANTIZED_WEIGHTS.clear()  # the first build computes every weight's scales (ORT's own code)
    calibrated = quantize._BUILDERS["int8"](onnx.load(str(tmp_path / "fp32.onnx")), chosen, None, context)
    assert len(list((tmp_path / "ranges").glob("*.json"))) == 1
    assert quantize.QUANTIZED_WEIGHTS.hits == 0
    cached = quantize.BuildContext(inputs, _Uncalled(), choice, tmp_path / "ranges")
    from_ranges = quantize._BUILDERS["int8"](onnx.load(str(tmp_path / "fp32.onnx")), chosen, None, cached)
    assert quantize.QUANTIZED_WEIGHTS.hits == 2 * len(chosen)  # each weight's scales and int8 values reused

    fp32_model = onnx.load(str(tmp_path / "fp32.onnx"))
    quantize_static(tmp_path / "fp32.onnx", tmp_path / "ort.onnx", quantize._BatchReader(inputs, calibration),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, nodes_to_quantize=chosen + quantize.activations_between(fp32_model, chosen),
                    op_types_to_quantize=list(quantize.CALIBRATED_OPS))
    ort_model = onnx.load(str(tmp_path / "ort.onnx"))
    quantize.keep_float_inputs(ort_model, context.float_nodes())  # what the builder does after ORT's quantizer
    assert sum(n.op_type == "QuantizeLinear" for n in from_ranges.graph.node) > 0
    assert calibrated.SerializeToString() == ort_model.SerializeToString()
    assert from_ranges.SerializeToString() == ort_model.SerializeToString()


class _Uncalled:
    """Calibration data that must not be read: the cached ranges have to serve."""

    def __iter__(self):
        raise AssertionError("calibration ran again")


def test_a_mix_with_4bit_layers_reuses_the_ranges_calibrated_on_the_export(task, layers, tmp_path):
    import tuner.build.quantize as quantize

    export_onnx(task.model, task.example_inputs, tmp_path / "fp32.onnx")
    nodes = map_layers(onnx.load(str(tmp_path / "fp32.onnx")), layer_weights(task.model, layers))
    calibration = [[t.numpy() for t in batch] for batch in task.calibration_inputs]
    uniform = {nodes[name].name: "int8" for name in layers}
    quantize.apply_precisions(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", uniform, calibration,
                              calibration_cache=tmp_path / "ranges")
    # 4-bit layers are built before static int8 and change the model it quantizes; its ranges still come from
    # the export's calibration
    mix = {node: ("int4-b16" if i % 3 == 0 else "int8") for i, node in enumerate(uniform)}
    quantize.apply_precisions(tmp_path / "fp32.onnx", tmp_path / "mix.onnx", mix, _Uncalled(),
                              calibration_cache=tmp_path / "ranges")
    assert len(list((tmp_path / "ranges").glob("*.json"))) == 1

    built = {path: onnx.load(str(tmp_path / path)) for path in ("int8.onnx", "mix.onnx")}
    assert sum(n.op_type == "MatMulNBits" for n in built["mix.onnx"].graph.node) == sum(
        c.startswith("int4") for c in mix.values())
    scales = {path: {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_scale")}
              for path, model in built.items()}
    static_nodes = [node for node, c in mix.items() if c == "int8"]
    quantized_inputs = {n.input[0] for n in built["mix.onnx"].graph.node if n.name in static_nodes}
    compared = 0
    for model in built.values():  # the activation scale each static layer reads, in both models
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and node.output[0] in quantized_inputs:
                name = node.input[1]
                assert (scales["int8.onnx"][name] == scales["mix.onnx"][name]).all(), name
                compared += 1
    assert compared >= len(static_nodes)
