"""Warnings read off the uniform references once they are measured: what the kinds did to this model.

Per-channel dynamic int8 can score far worse than per-tensor: ORT's u8*s8 kernels sum pairs of products in
16 bits on CPUs without VNNI, and full-range per-channel weights overflow them (ORT's docs advise
``reduce_range``, 7-bit weights, for that). A pretrained 110M-parameter encoder scored cosine 0.05 with
per-channel weights against 0.67 per tensor and 0.86 with 7-bit per-channel weights. A user who sees only
a bad front would not know why.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from tuner.core.precision import (
    INT8_DYNAMIC,
    INT8_DYNAMIC_PER_CHANNEL,
    INT8_DYNAMIC_PER_CHANNEL_7BIT,
)
from tuner.core.records import StudyMeta, TrialMeta, reference_label
from tuner.search.loop import FinishedTrial

PER_CHANNEL = reference_label(INT8_DYNAMIC_PER_CHANNEL)
PER_TENSOR = reference_label(INT8_DYNAMIC)


def per_channel_warning(metrics: dict[str, float], meta: StudyMeta, offered: set[str]) -> str | None:
    """The warning when uniform per-channel dynamic int8 drops the metric clearly more than per-tensor does
    (by more than the constraint, or 0.01 without one); ``metrics``: reference label -> metric."""
    if PER_CHANNEL not in metrics or PER_TENSOR not in metrics:
        return None
    drop_pc, drop_pt = meta.drop(metrics[PER_CHANNEL]), meta.drop(metrics[PER_TENSOR])
    if drop_pc - drop_pt <= (meta.max_metric_drop or 0.01):
        return None
    advice = (f"{INT8_DYNAMIC_PER_CHANNEL_7BIT} (7-bit per-channel weights) is in the space"
              if INT8_DYNAMIC_PER_CHANNEL_7BIT in offered else
              f"add {INT8_DYNAMIC_PER_CHANNEL_7BIT} (7-bit per-channel weights, ORT's reduce_range) to the space")
    return (f"warning: uniform {INT8_DYNAMIC_PER_CHANNEL} scored {meta.metric_name}={metrics[PER_CHANNEL]:.4f}, "
            f"far below per-tensor {INT8_DYNAMIC} ({metrics[PER_TENSOR]:.4f}; fp32 {meta.baseline_metric:.4f}): "
            "8-bit per-channel weights can overflow ORT's int8 kernels on this CPU; " + advice + ".")


class PerChannelCheck:
    """A loop callback: once both dynamic int8 references are measured, warns (once) if per-channel lost."""

    def __init__(self, offered: set[str], write: Callable[[str], None]):
        self.offered = offered
        self.write = write
        self.done = False

    def __call__(self, study: optuna.Study, finished: FinishedTrial) -> None:
        if self.done or not TrialMeta.of(finished.trial).reference:
            return
        metrics = {TrialMeta.of(t).reference: t.values[0] for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE and TrialMeta.of(t).reference}
        if PER_CHANNEL in metrics and PER_TENSOR in metrics:
            self.done = True
            warning = per_channel_warning(metrics, StudyMeta.load(study), self.offered)
            if warning:
                self.write(warning)
