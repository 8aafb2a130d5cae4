import textwrap

import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.build.prune import pruning_groups
from tuner.space import SearchSpace, SpaceError, load_space_file, quantizable_layers
from tuner.tasks.digits_cnn import DigitsResNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DigitsResNet(width=16).eval()


@pytest.fixture(scope="module")
def groups(model):
    return pruning_groups(model, (torch.randn(1, 1, 32, 32),), ["fc"])


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def resolve(tmp_path, model, groups, text):
    return SearchSpace(load_space_file(write(tmp_path, text)), quantizable_layers(model), groups)


def test_residual_layers_are_coupled_into_one_named_group(groups):
    by_name = {g.name: g for g in groups}
    assert "stem.0+layer1.0.conv2+layer1.1.conv2" in by_name
    assert by_name["layer2.conv2+layer2.shortcut.0"].members == ("layer2.conv2", "layer2.shortcut.0")
    assert all("fc" not in g.members for g in groups)  # the output layer is never pruned


def test_first_match_wins_skip_and_distributions(tmp_path, model, groups):
    space = resolve(tmp_path, model, groups, """
        layers:
          - match: fc
            bits: [8, 32]
          - match: layer2.conv1
            skip: true
          - match: "re:.*"
            bits: [8, 32]
            prune: {low: 0.0, high: 0.5, step: 0.25}
        fusion:
          opt_level: [extended, all]
    """)
    dists = space.distributions()
    assert dists["bits.fc"] == IntDistribution(8, 32, step=24)
    assert "bits.layer2.conv1" not in dists and "prune.layer2.conv1" not in dists
    assert dists["prune.stem.0+layer1.0.conv2+layer1.1.conv2"] == FloatDistribution(0.0, 0.5, step=0.25)
    assert dists["prune.layer3.conv1"] == FloatDistribution(0.0, 0.5, step=0.25)
    assert dists["opt_level"] == CategoricalDistribution(["extended", "all"])


@pytest.fixture
def coupled_ok_text():
    return """
        layers:
          - match: fc
            bits: [8, 32]
          - match: "re:.*"
            bits: [8, 32]
            prune: {low: 0.0, high: 0.5, step: 0.25}
    """


def test_decode_and_uniform_params(tmp_path, model, groups, coupled_ok_text):
    space = resolve(tmp_path, model, groups, coupled_ok_text)
    params = space.uniform_params(8)
    cand = space.decode(params)
    assert set(cand.int8_layers) == set(quantizable_layers(model))
    assert not cand.is_pruned
    params["prune.stem.0+layer1.0.conv2+layer1.1.conv2"] = 0.25
    params["bits.fc"] = 32
    cand = space.decode(params)
    assert dict(cand.prune)["stem.0+layer1.0.conv2+layer1.1.conv2"] == 0.25
    assert dict(cand.bits)["fc"] == 32
    assert cand.opt_level == "all"  # the default fusion choice when the file gives none


def test_single_value_choices_are_fixed_not_searched(tmp_path, model, groups):
    space = resolve(tmp_path, model, groups, """
        layers:
          - match: "re:.*"
            bits: 8
    """)
    assert space.distributions() == {}
    assert set(space.decode({}).int8_layers) == set(quantizable_layers(model))


@pytest.mark.parametrize("text, message", [
    ("layers: []\nextra: 1\n", r"unknown top-level key\(s\) \['extra'\]"),
    ("layers:\n  - match: fc\n    bitz: [8]\n", r"layers\[0\]: unknown key\(s\) \['bitz'\]"),
    ("layers:\n  - match: fc\n    bits: [4, 8]\n", r"layers\[0\] \(match 'fc'\): bits value 4 cannot be built"),
    ("layers:\n  - match: 're:(['\n", r"layers\[0\] \(match 're:\(\['\): invalid regex"),
    ("layers:\n  - match: fc\n    prune: {low: 0.5, high: 0.2}\n", r"prune.low <= prune.high"),
    ("layers:\n  - match: fc\n    skip: true\n    bits: [8]\n", r"a 'skip' rule leaves its layers alone"),
    ("fusion:\n  opt_level: [max]\n", r"fusion.opt_level value 'max' is not an ORT optimization level"),
    ("fusion:\n  disabled: [x]\n", r"fusion: unknown key\(s\) \['disabled'\]"),
])
def test_file_errors_name_file_rule_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError, match=message) as err:
        load_space_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("layers:\n  - match: head\n    bits: [8, 32]\n", r"layers\[0\] \(match 'head'\): matches no layer"),
    ("layers:\n  - match: 're:.*'\n    bits: [8]\n  - match: fc\n    bits: [32]\n",
     r"layers\[1\] \(match 'fc'\): every layer it matches is taken by an earlier rule"),
    ("layers:\n  - match: fc\n    prune: {low: 0.0, high: 0.5, step: 0.25}\n", r"none of its layers can be pruned"),
    ("layers:\n  - match: stem.0\n    skip: true\n  - match: 're:.*'\n    prune: {low: 0.0, high: 0.5, step: 0.25}\n",
     r"coupled by pruning .*stem.0: layers\[0\] \(match 'stem.0'\) -> prune none; layer1.0.conv2: layers\[1\]"),
    ("layers:\n  - match: layer1.0.conv1\n    prune: {low: 0.0, high: 0.75, step: 0.25}\n",
     r"prune ratio 0.75 leaves no channels in layer1.0.conv1 \(16 channels"),
])
def test_model_errors_name_rule_and_value(tmp_path, model, groups, text, message):
    with pytest.raises(SpaceError, match=message):
        resolve(tmp_path, model, groups, text)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpaceError, match="search-space file not found"):
        load_space_file(tmp_path / "nope.yaml")
