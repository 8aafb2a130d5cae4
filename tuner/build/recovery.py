"""Recovery after pruning: nothing, BatchNorm recalibration, a short distillation from the fp32 model, or the
task's own fine-tuning function. Runs on the worker, bounded by a step budget and a time limit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from tuner.build.prune import recalibrate_batchnorm
from tuner.core.errors import UserCodeError, where
from tuner.core.vocab import RECOVERY_METHODS
from tuner.task import first_output, model_inputs


@dataclass(frozen=True)
class RecoverySettings:
    """Budget for the ``distill`` method (from the experiment file)."""

    steps: int = 100
    lr: float = 1e-4
    time_limit_s: float = 120.0

    def times(self, budget: int) -> RecoverySettings:
        """``budget`` times the steps and the time limit (a candidate's ``recovery_budget``)."""
        return RecoverySettings(self.steps * budget, self.lr, self.time_limit_s * budget)


def recover(student: nn.Module, teacher: nn.Module, method: str, batches: Sequence[tuple[torch.Tensor, ...]],
            settings: RecoverySettings, finetune: Callable[[nn.Module], Any] | None = None) -> dict[str, float]:
    """Recover ``student`` (a pruned copy of ``teacher``) in place; returns what it cost and did."""
    if method not in RECOVERY_METHODS:
        raise ValueError(f"recovery must be one of {RECOVERY_METHODS}, but got {method!r}.")
    start = time.perf_counter()
    report: dict[str, float] = {}
    if method in ("batchnorm", "distill"):
        recalibrate_batchnorm(student, batches)
    if method == "distill":
        report.update(distill(student, teacher, batches, settings))
    if method == "task":
        if finetune is None:
            raise ValueError("recovery 'task' needs the task to supply Task.finetune(model).")
        try:
            finetune(student)
        except Exception as exc:  # the user's code: say so, and where
            raise UserCodeError(f"the task's finetune hook raised{where(exc)}: {type(exc).__name__}: {exc}") from exc
    student.eval()
    report["recovery_s"] = time.perf_counter() - start
    return report


def distill(student: nn.Module, teacher: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]],
            settings: RecoverySettings) -> dict[str, float]:
    """Match the teacher's (first) outputs (MSE) on unlabeled batches for ``settings.steps`` Adam steps or until the
    time limit. BatchNorm layers stay in eval mode: their statistics were just re-estimated."""
    teacher.eval()
    student.eval()
    with torch.no_grad():
        targets = [first_output(teacher(*batch)) for batch in batches]
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    loss_fn = nn.MSELoss()

    def run(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:  # the student takes the batch as it was pruned to
        return first_output(student(*model_inputs(student, batch)))

    @torch.no_grad()
    def mean_loss() -> float:
        return sum(float(loss_fn(run(b), t)) for b, t in zip(batches, targets)) / len(batches)

    before = mean_loss()
    deadline = time.perf_counter() + settings.time_limit_s
    steps = 0
    with torch.enable_grad():
        while steps < settings.steps and time.perf_counter() < deadline:
            batch, target = batches[steps % len(batches)], targets[steps % len(batches)]
            loss = loss_fn(run(batch), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    return {"distill_steps": float(steps), "distill_loss_before": before, "distill_loss_after": mean_loss()}
