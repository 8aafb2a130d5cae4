import pytest

from tuner.core.candidate import Candidate


def test_key_is_stable_and_independent_of_order():
    a = Candidate(precision=(("b", "int8"), ("a", "fp32")), prune=(("g", 0.25),), opt_level="all")
    b = Candidate.from_dict({"precision": {"a": "fp32", "b": "int8"}, "prune": {"g": 0.25}, "opt_level": "all"})
    assert a == b
    assert a.key("task1") == b.key("task1")
    assert len(a.key("task1")) == 16


@pytest.mark.parametrize("change", [
    {"precision": {"a": "int8", "b": "int8"}, "prune": {"g": 0.25}, "opt_level": "all"},
    {"precision": {"a": "fp32", "b": "int4-b32"}, "prune": {"g": 0.25}, "opt_level": "all"},
    {"precision": {"a": "fp32", "b": "int8"}, "prune": {"g": 0.5}, "opt_level": "all"},
    {"precision": {"a": "fp32", "b": "int8"}, "prune": {"g": 0.25}, "opt_level": "basic"},
    {"precision": {"a": "fp32", "b": "int8"}, "prune": {"g": 0.25}, "opt_level": "all", "fusions": ["bias_gelu"]},
    {"precision": {"a": "fp32", "b": "int8"}, "prune": {"g": 0.25}, "opt_level": "all",
     "disabled_optimizers": ["NchwcTransformer"]},
])
def test_key_changes_with_any_choice(change):
    base = Candidate.from_dict({"precision": {"a": "fp32", "b": "int8"}, "prune": {"g": 0.25}, "opt_level": "all"})
    assert Candidate.from_dict(change).key("t") != base.key("t")


def test_key_changes_with_task():
    c = Candidate(precision=(("a", "int8"),))
    assert c.key("task1") != c.key("task2")


def test_round_trip_through_dict():
    c = Candidate(precision=(("x", "int8-dynamic"), ("y", "int4-b128")), prune=(("x+y", 0.125),),
                  opt_level="extended", fusions=("skip_layer_norm",), disabled_optimizers=("GeluFusionL2",))
    assert Candidate.from_dict(c.to_dict()) == c


def test_prune_key_is_shared_by_candidates_that_prune_alike():
    a = Candidate(precision=(("x", "int8"),), prune=(("g", 0.25),))
    b = Candidate(precision=(("x", "fp32"),), prune=(("g", 0.25),), opt_level="basic", fusions=("gelu",))
    c = Candidate(precision=(("x", "int8"),), prune=(("g", 0.5),))
    assert a.prune_key("t") == b.prune_key("t") != c.prune_key("t")


def test_summary_counts_precision_families():
    c = Candidate(precision=(("a", "int4-b32"), ("b", "int4-b128"), ("c", "int8"), ("d", "fp32")),
                  fusions=("bias_gelu",))
    assert c.precision_counts() == {"int4": 2, "int8": 1, "fp32": 1}
    assert c.summary() == "int4 2, int8 1, fp32 1; unpruned; opt=all; fused bias_gelu"


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": (("a", "int4"),)}, "layer 'a': precision 'int4' cannot be built"),
    ({"precision": (("a", "int4-b48"),)}, "block size N in"),
    ({"prune": (("g", 1.0),)}, "pruning ratio of group 'g'"),
    ({"opt_level": "max"}, "opt_level must be one of"),
])
def test_invalid_candidates_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Candidate(**kwargs)


def test_a_longer_distillation_is_its_own_pruned_model_and_means_nothing_without_distillation():
    distilled = Candidate(precision=(("x", "int8"),), prune=(("g", 0.25),), recovery="distill")
    longer = Candidate(precision=(("x", "int8"),), prune=(("g", 0.25),), recovery="distill", recovery_budget=4)
    assert longer.prune_key("t") != distilled.prune_key("t") and longer.key("t") != distilled.key("t")
    assert Candidate.from_dict(longer.to_dict()) == longer and "recovery_budget" not in distilled.to_dict()
    assert "distill x4" in longer.summary()
    # batchnorm recalibration and an unpruned model have no budget to multiply: one key each, as before
    assert Candidate(prune=(("g", 0.25),), recovery="batchnorm", recovery_budget=4).recovery_budget == 1
    assert Candidate(precision=(("x", "int8"),), recovery="distill", recovery_budget=4).recovery_budget == 1
    with pytest.raises(ValueError, match="recovery_budget must be a whole number"):
        Candidate(prune=(("g", 0.25),), recovery="distill", recovery_budget=0)
