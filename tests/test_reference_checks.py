"""The warnings read off the uniform references (the rule itself; studies run it as a loop callback)."""

from tuner.core.records import StudyMeta
from tuner.search.reference_checks import PER_CHANNEL, PER_TENSOR, per_channel_warning

META = StudyMeta(metric_name="cosine", baseline_metric=1.0, max_metric_drop=0.01)


def test_per_channel_far_below_per_tensor_is_a_warning_that_names_the_7_bit_kind():
    warning = per_channel_warning({PER_CHANNEL: 0.047, PER_TENSOR: 0.668}, META, {"fp32", "int8-dynamic-pc"})
    assert warning.startswith("warning: uniform int8-dynamic-pc scored cosine=0.0470, far below per-tensor "
                              "int8-dynamic (0.6680; fp32 1.0000)")
    assert "add int8-dynamic-pc7" in warning
    offered = {"fp32", "int8-dynamic-pc", "int8-dynamic-pc7"}
    assert "int8-dynamic-pc7 (7-bit per-channel weights) is in the space" in per_channel_warning(
        {PER_CHANNEL: 0.047, PER_TENSOR: 0.668}, META, offered)


def test_no_warning_when_per_channel_is_as_good_or_a_reference_is_missing():
    assert per_channel_warning({PER_CHANNEL: 0.993, PER_TENSOR: 0.957}, META, set()) is None  # MiniLM: pc better
    assert per_channel_warning({PER_CHANNEL: 0.950, PER_TENSOR: 0.957}, META, set()) is None  # within the constraint
    assert per_channel_warning({PER_CHANNEL: 0.047}, META, set()) is None


def test_a_minimized_metric_counts_its_drop_upward():
    meta = StudyMeta(metric_name="loss", baseline_metric=0.5, max_metric_drop=0.05, direction="minimize")
    assert per_channel_warning({PER_CHANNEL: 0.9, PER_TENSOR: 0.52}, meta, set()) is not None
    assert per_channel_warning({PER_CHANNEL: 0.52, PER_TENSOR: 0.9}, meta, set()) is None
