import pytest

from tuner.results.front import FrontRow
from tuner.results.pick import PickError, choose, knee_point

FRONT = [  # fastest first, as front_rows gives it
    FrontRow(1, 0.90, 1.0, size_mb=1.0),
    FrontRow(2, 0.97, 1.2, size_mb=2.0),
    FrontRow(3, 0.98, 2.0, size_mb=3.0),
    FrontRow(4, 0.99, 4.0, size_mb=4.0),
]


@pytest.mark.parametrize("kwargs, trial", [
    ({"min_metric": 0.975}, 3),                              # fastest meeting the metric
    ({"max_latency_ms": 2.5}, 3),                            # most accurate within the budget
    ({"max_size_mb": 2.5}, 1),                               # fastest within the size
    ({"min_metric": 0.95, "max_size_mb": 2.5}, 2),           # constraints combine
    ({"max_latency_ms": 5.0, "max_size_mb": 3.5}, 3),
    ({"knee": True}, 2),                                     # big accuracy gain for little latency
])
def test_choose(kwargs, trial):
    assert choose(FRONT, "accuracy", True, **kwargs).trial == trial


def test_choose_minimizing_metric():
    front = [FrontRow(1, 0.5, 1.0, size_mb=1), FrontRow(2, 0.2, 3.0, size_mb=1)]
    assert choose(front, "loss", False, min_metric=0.3).trial == 2
    assert choose(front, "loss", False, max_latency_ms=5).trial == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"min_metric": 0.999}, r"no front member has accuracy >= 0.999; the best is 0.9900 \(trial 4\)"),
    ({"max_size_mb": 0.5}, r"is at most 0.5 MB; the smallest is 1.000 MB \(trial 1\)"),
    ({"min_metric": 0.98, "max_latency_ms": 1.5}, r"meeting the other constraints has latency <= 1.5 ms; the fastest "
                                                  r"is 2.000 ms \(trial 3\)"),
])
def test_unmeetable_constraints_say_what_the_front_offers(kwargs, message):
    with pytest.raises(PickError, match=message):
        choose(FRONT, "accuracy", True, **kwargs)


def test_knee_of_a_straight_front_is_an_end_and_small_fronts_pick_the_fastest():
    line = [FrontRow(i, 0.9 + 0.01 * i, 1.0 + i, size_mb=1) for i in range(4)]
    assert knee_point(line, "accuracy", True).trial in (0, 3)
    assert knee_point(FRONT[:2], "accuracy", True).trial == 1
