import pytest

from tuner.candidate import Candidate


def test_key_is_stable_and_independent_of_order():
    a = Candidate(bits=(("b", 8), ("a", 32)), prune=(("g", 0.25),), opt_level="all")
    b = Candidate.from_dict({"bits": {"a": 32, "b": 8}, "prune": {"g": 0.25}, "opt_level": "all"})
    assert a == b
    assert a.key("task1") == b.key("task1")
    assert len(a.key("task1")) == 16


@pytest.mark.parametrize("change", [
    {"bits": {"a": 8, "b": 8}, "prune": {"g": 0.25}, "opt_level": "all"},
    {"bits": {"a": 32, "b": 8}, "prune": {"g": 0.5}, "opt_level": "all"},
    {"bits": {"a": 32, "b": 8}, "prune": {"g": 0.25}, "opt_level": "basic"},
])
def test_key_changes_with_any_choice(change):
    base = Candidate.from_dict({"bits": {"a": 32, "b": 8}, "prune": {"g": 0.25}, "opt_level": "all"})
    assert Candidate.from_dict(change).key("t") != base.key("t")


def test_key_changes_with_task():
    c = Candidate(bits=(("a", 8),))
    assert c.key("task1") != c.key("task2")


def test_round_trip_through_dict():
    c = Candidate(bits=(("x", 8), ("y", 32)), prune=(("x+y", 0.125),), opt_level="extended")
    assert Candidate.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": (("a", 4),)}, "bits of layer 'a'"),
    ({"prune": (("g", 1.0),)}, "pruning ratio of group 'g'"),
    ({"opt_level": "max"}, "opt_level must be one of"),
])
def test_invalid_candidates_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Candidate(**kwargs)
