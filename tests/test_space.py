import textwrap

import optuna
import pytest
import torch
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.build.layers import layer_op_types, quantizable_layers
from tuner.build.prune import pruning_groups
from tuner.core.errors import SpaceError
from tuner.space import PRUNED, SearchSpace, load_space_file
from tuner.tasks.digits_cnn import DigitsResNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DigitsResNet(width=16).eval()


@pytest.fixture(scope="module")
def groups(model):
    return pruning_groups(model, (torch.randn(1, 1, 32, 32),), ["fc"])


@pytest.fixture(scope="module")
def layer_ops(model):
    return layer_op_types(model, (torch.randn(2, 1, 32, 32),))


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def resolve(tmp_path, layer_ops, groups):
    def resolve(text):
        return SearchSpace(load_space_file(write(tmp_path, text)), layer_ops, groups)
    return resolve


def test_layers_map_to_their_onnx_op_types(model, layer_ops):
    assert list(layer_ops) == quantizable_layers(model)
    assert layer_ops["fc"] == "Gemm"
    assert {op for name, op in layer_ops.items() if name != "fc"} == {"Conv"}


def test_residual_layers_are_coupled_into_one_named_group(groups):
    by_name = {g.name: g for g in groups}
    assert "stem.0+layer1.0.conv2+layer1.1.conv2" in by_name
    assert by_name["layer2.conv2+layer2.shortcut.0"].members == ("layer2.conv2", "layer2.shortcut.0")
    assert all("fc" not in g.members for g in groups)  # the output layer is never pruned


def test_first_match_wins_skip_and_distributions(resolve):
    space = resolve("""
        layers:
          - match: fc
            precision: [fp32, int8]
          - match: layer2.conv1
            skip: true
          - match: "re:.*"
            precision: [fp32, int8]
            prune: {low: 0.0, high: 0.5, step: 0.25}
        fusion:
          opt_level: [extended, all]
    """)
    dists = space.distributions()
    assert dists["precision.fc"] == CategoricalDistribution(["fp32", "int8"])
    assert "precision.layer2.conv1" not in dists and "prune.layer2.conv1" not in dists
    assert dists["prune.stem.0+layer1.0.conv2+layer1.1.conv2"] == FloatDistribution(0.0, 0.5, step=0.25)
    assert dists["prune.layer3.conv1"] == FloatDistribution(0.0, 0.5, step=0.25)
    assert dists["opt_level"] == CategoricalDistribution(["extended", "all"])


@pytest.fixture
def coupled_ok_text():
    return """
        layers:
          - match: fc
            precision: [fp32, int8]
          - match: "re:.*"
            precision: [fp32, int8]
            prune: {low: 0.0, high: 0.5, step: 0.25}
    """


def test_decode_and_uniform_params(resolve, model, coupled_ok_text):
    space = resolve(coupled_ok_text)
    params = space.uniform_params("int8")
    cand = space.decode(params)
    assert set(cand.quantized_layers) == set(quantizable_layers(model))
    assert not cand.is_pruned
    params["prune.stem.0+layer1.0.conv2+layer1.1.conv2"] = 0.25
    params["precision.fc"] = "fp32"
    assert not space.decode(params).is_pruned  # the pruning switch is off in a uniform candidate
    params[PRUNED] = True
    cand = space.decode(params)
    assert dict(cand.prune)["stem.0+layer1.0.conv2+layer1.1.conv2"] == 0.25
    assert dict(cand.precision)["fc"] == "fp32"
    assert cand.opt_level == "all"  # the default fusion choice when the file gives none


def test_a_pruning_switch_gives_unpruned_candidates_real_prior_mass(resolve, coupled_ok_text):
    space = resolve(coupled_ok_text)
    dists = space.distributions()
    assert dists[PRUNED] == CategoricalDistribution([False, True])
    groups = [name for name in dists if name.startswith("prune.")]
    params = space.uniform_params("int8") | {name: 0.5 for name in groups}
    off = space.decode(params)
    assert not off.is_pruned and all(space.readable(params)[name] == 0.0 for name in groups)
    on = space.decode(params | {PRUNED: True})
    assert dict(on.prune) == {name[len("prune."):]: 0.5 for name in groups}
    assert space.params_of(on)[PRUNED] is True and space.params_of(off)[PRUNED] is False
    # independent draws (random, TPE's prior) leave about half of the candidates unpruned; without the switch,
    # every one of these groups at 0 of 3 ratios would be 1 in 3**len(groups)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    unpruned = sum(not space.decode(study.ask(dists).params).is_pruned for _ in range(200))
    assert 70 <= unpruned <= 130


def test_a_space_that_prunes_nothing_has_no_pruning_switch(resolve):
    space = resolve("layers:\n  - match: \"re:.*\"\n    precision: [fp32, int8]\n")
    assert PRUNED not in space.distributions() and PRUNED not in space.uniform_params("int8")


def test_single_value_choices_are_fixed_not_searched(resolve, model):
    space = resolve("""
        layers:
          - match: "re:.*"
            precision: int8
    """)
    assert space.distributions() == {}
    assert set(space.decode({}).quantized_layers) == set(quantizable_layers(model))


def test_references_are_fp32_and_one_uniform_candidate_per_precision(resolve):
    space = resolve("""
        layers:
          - match: "re:.*"
            precision: [fp32, int8]
        fusion:
          opt_level: [basic, all]
          disable: [NchwcTransformer]
    """)
    refs = dict(space.references())
    assert list(refs) == ["fp32", "uniform int8"]
    fp32, int8 = space.decode(refs["fp32"]), space.decode(refs["uniform int8"])
    assert fp32.quantized_layers == {} and set(int8.precision_counts()) == {"int8"}
    assert fp32.opt_level == int8.opt_level == "all" and not int8.disabled_optimizers


def test_fusion_choices_become_boolean_dimensions(resolve):
    space = resolve("""
        layers:
          - match: "re:.*"
            precision: int8
        fusion:
          transformer_fusions: [bias_gelu, skip_layer_norm]
          disable: [NchwcTransformer, ConvActivationFusion]
    """)
    dists = space.distributions()
    for name in ("fuse.bias_gelu", "fuse.skip_layer_norm", "disable.NchwcTransformer",
                 "disable.ConvActivationFusion"):
        assert dists[name] == CategoricalDistribution([False, True])
    cand = space.decode({"fuse.bias_gelu": True, "disable.NchwcTransformer": True})
    assert cand.fusions == ("bias_gelu",) and cand.disabled_optimizers == ("NchwcTransformer",)


@pytest.mark.parametrize("text, message", [
    ("layers: []\nextra: 1\n", r"unknown top-level key\(s\) \['extra'\]"),
    ("layers:\n  - match: fc\n    bitz: [8]\n", r"layers\[0\]: unknown key\(s\) \['bitz'\]"),
    ("layers:\n  - match: fc\n    precision: [int4, int8]\n",
     r"layers\[0\] \(match 'fc'\): precision 'int4' cannot be built; choose from"),
    ("layers:\n  - match: fc\n    precision: [int4-b7]\n", r"precision 'int4-b7' cannot be built"),
    ("fusion:\n  disable: [NchwcTransformr]\n",
     r"fusion.disable value 'NchwcTransformr' is not a graph transformer of the installed onnxruntime .*NchwcTransformer"),
    ("fusion:\n  transformer_fusions: [attention]\n", r"'attention' merges query/key/value into one Attention node"),
    ("fusion:\n  transformer_fusions: [bias_gleu]\n", r"'bias_gleu' is not a transformer fusion"),
    ("layers:\n  - match: 're:(['\n", r"layers\[0\] \(match 're:\(\['\): invalid regex"),
    ("layers:\n  - match: fc\n    prune: {low: 0.5, high: 0.2}\n", r"prune.low <= prune.high"),
    ("layers:\n  - match: fc\n    skip: true\n    precision: [int8]\n", r"a 'skip' rule leaves its layers alone"),
    ("fusion:\n  opt_level: [max]\n", r"fusion.opt_level value 'max' is not an ORT optimization level"),
    ("fusion:\n  disabled: [x]\n", r"fusion: unknown key\(s\) \['disabled'\]"),
])
def test_file_errors_name_file_rule_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError, match=message) as err:
        load_space_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("layers:\n  - match: head\n    precision: [fp32, int8]\n", r"layers\[0\] \(match 'head'\): matches no layer"),
    ("layers:\n  - match: 're:.*'\n    precision: [int8]\n  - match: fc\n    precision: [fp32]\n",
     r"layers\[1\] \(match 'fc'\): every layer it matches is taken by an earlier rule"),
    ("layers:\n  - match: fc\n    prune: {low: 0.0, high: 0.5, step: 0.25}\n", r"none of its layers can be pruned"),
    ("layers:\n  - match: stem.0\n    skip: true\n  - match: 're:.*'\n    prune: {low: 0.0, high: 0.5, step: 0.25}\n",
     r"coupled by pruning .*stem.0: layers\[0\] \(match 'stem.0'\) -> prune none; layer1.0.conv2: layers\[1\]"),
    ("layers:\n  - match: layer1.0.conv1\n    prune: {low: 0.0, high: 0.75, step: 0.25}\n",
     r"prune ratio 0.75 leaves no channels in layer1.0.conv1 \(16 channels"),
    ("layers:\n  - match: 're:.*'\n    precision: [int8, int4-b32]\n",
     r"precision 'int4-b32' runs on MatMul/Gather nodes only, but its layers became Conv/Gemm nodes"),
    ("layers:\n  - match: fc\n    precision: [fp32, int8-dynamic]\n",
     r"precision 'int8-dynamic' runs on MatMul nodes only, but its layers became Gemm nodes"),
])
def test_model_errors_name_rule_and_value(resolve, text, message):
    with pytest.raises(SpaceError, match=message):
        resolve(text)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpaceError, match="search-space file not found"):
        load_space_file(tmp_path / "nope.yaml")


def test_recovery_is_a_search_dimension_only_when_something_can_be_pruned(resolve, tmp_path):
    space = resolve("""
        layers:
          - match: layer3.conv1
            prune: {low: 0.0, high: 0.5, step: 0.25}
        recovery: [batchnorm, distill]
        importance: [magnitude, lamp]
    """)
    assert space.distributions()["recovery"] == CategoricalDistribution(["batchnorm", "distill"])
    assert space.distributions()["importance"] == CategoricalDistribution(["magnitude", "lamp"])
    assert space.decode({"importance": "lamp", "prune.layer3.conv1": 0.25}).importance == "lamp"
    assert space.decode({"recovery": "distill", "prune.layer3.conv1": 0.25}).recovery == "distill"
    assert space.decode({"recovery": "distill", "prune.layer3.conv1": 0.0}).recovery == "none"  # nothing pruned
    # an unpruned candidate (recovery "none") maps back to parameters its distributions accept (the plan queues them)
    params = space.params_of(space.decode({"recovery": "distill", "prune.layer3.conv1": 0.0}))
    assert all(dist._contains(dist.to_internal_repr(params[name])) for name, dist in space.distributions().items())
    unprunable = resolve("layers:\n  - match: fc\n    precision: [fp32, int8]\nrecovery: [none, distill]\n")
    assert "recovery" not in unprunable.distributions()
    bad = tmp_path / "bad.yaml"
    bad.write_text("recovery: [finetune]\n")
    with pytest.raises(SpaceError, match=r"bad.yaml: recovery must be one or more of \['none', 'batchnorm', 'distill', "
                                         r"'task'\].*got \['finetune'\]"):
        load_space_file(bad)


def test_tuner_space_prints_the_generated_space_as_a_file_to_start_from(tmp_path, capsys):
    import yaml

    from tuner.cli import main

    (tmp_path / "given.yaml").write_text("layers:\n  - match: fc\n    precision: [fp32]\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: printed\ntask: tiny_mlp:make_task\nsearch_space: given.yaml\n")
    assert main(["space", str(exp)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("# generated by `tuner space")
    assert "exported in" in out.err  # what setup logs goes to stderr, the YAML alone to stdout
    data = yaml.safe_load(out.out)
    assert [rule["match"] for rule in data["layers"]] == ["0", "2", "4"]  # its own space, not the file's
    (tmp_path / "printed.yaml").write_text(out.out)
    space = load_space_file(tmp_path / "printed.yaml")  # a valid space file as printed
    assert {rule.match for rule in space.rules} == {"0", "2", "4"}
    assert any(rule.prune is not None for rule in space.rules)  # the hidden layers are prunable


def test_ordered_precision_is_an_integer_from_closest_to_fp32_to_furthest(tmp_path):
    """For GP: each layer's choices sorted by how far they are from fp32, encoded as 0..n-1 and decoded back."""
    path = write(tmp_path, """
        layers:
          - match: "re:.*"
            precision: [int4-b32, int8, fp32, int8-dynamic, int8-dynamic-pc]
    """)
    space = SearchSpace(load_space_file(path), {"a": "MatMul", "b": "Gemm"}, [], ordered_precision=True)
    assert space.precision_choices == {"a": ("fp32", "int8-dynamic-pc", "int8-dynamic", "int8", "int4-b32"),
                                       "b": ("fp32", "int8")}  # a Gemm runs neither dynamic int8 nor int4
    dists = space.distributions()
    assert dists["precision.a"] == IntDistribution(0, 4) and dists["precision.b"] == IntDistribution(0, 1)
    candidate = space.decode({"precision.a": 3, "precision.b": 1})
    assert dict(candidate.precision) == {"a": "int8", "b": "int8"}
    assert space.params_of(candidate) == {"precision.a": 3, "precision.b": 1}
    assert dict(space.decode(space.uniform_params("int8-dynamic")).precision) == {"a": "int8-dynamic", "b": "fp32"}
    assert space.readable({"precision.a": 4, "precision.b": 0}) == {"precision.a": "int4-b32", "precision.b": "fp32"}
    unordered = SearchSpace(load_space_file(path), {"a": "MatMul", "b": "Gemm"}, [])
    assert unordered.distributions()["precision.a"] == CategoricalDistribution(
        ["int4-b32", "int8", "fp32", "int8-dynamic", "int8-dynamic-pc"])


def test_tuner_space_measure_times_each_kinds_uniform_model_and_keeps_a_valid_file(tmp_path, capsys):
    """Which kinds stay depends on timings, so only the form is checked: a measured line per reference, fp32 kept,
    and every kind left in the file is one the model offers."""
    from tuner.cli import main

    exp = tmp_path / "exp.yaml"
    exp.write_text("name: measured\ntask: tiny_mlp:make_task\nlatency: {repeats: 5, warmup: 1}\n")
    assert main(["space", str(exp), "--measure"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("# generated by `tuner space") and "--measure`" in out.out.splitlines()[0]
    measured = [line for line in out.out.splitlines() if line.startswith("# fp32:") or line.startswith("# uniform ")]
    assert [line.split(":")[0] for line in measured] == ["# fp32", "# uniform int8"]  # tiny MLP: Gemm layers
    assert "ms (1.00x fp32)" in measured[0] and "accuracy" in measured[1]
    (tmp_path / "printed.yaml").write_text(out.out)
    space = load_space_file(tmp_path / "printed.yaml")
    assert all(rule.precision[0] == "fp32" and set(rule.precision) <= {"fp32", "int8"} for rule in space.rules)


def test_keep_fast_leaves_out_slow_and_failed_kinds_from_every_rule_and_a_rule_with_none_keeps_fp32():
    from tuner.search.kinds import KindTiming, keep_fast
    from tuner.space import Fusion, Rule, SpaceFile

    file = SpaceFile("auto", (Rule(0, "a", precision=("fp32", "int8", "int4-b32")),
                              Rule(1, "b", precision=("fp32", "int8-dynamic")),
                              Rule(2, "c", precision=("int4-b32",))), Fusion())
    timings = [KindTiming("fp32", 10.0, 1.0), KindTiming("uniform int8", 6.0, 0.6),
               KindTiming("uniform int8-dynamic", 10.5, 1.05), KindTiming("uniform int4-b32", None, None, error="x")]
    assert [t.kept for t in timings] == [True, True, False, False]
    kept = keep_fast(file, timings)
    assert [rule.precision for rule in kept.rules] == [("fp32", "int8"), ("fp32",), ("fp32",)]
    assert "left out: not faster" in timings[2].line("accuracy") and "failed (x), left out" in timings[3].line("m")
