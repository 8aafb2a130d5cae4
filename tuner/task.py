"""Tasks: the user's model, its inputs and its metric ("bring your own model").

An experiment names its task as ``package.module:function`` or ``path/to/file.py:function``.
The function takes the experiment's ``task_args`` as keyword arguments and returns a :class:`Task`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from tuner.core.errors import TaskError, where


@dataclass(frozen=True)
class Evaluation:
    """Held-out data and the metric computed on the outputs of the candidate's ORT session.

    ``inputs`` holds one array per model input (first axis: samples). ``metric`` receives the
    session's first output for all samples, concatenated along the first axis, and returns a float.
    ``extra_metrics`` are computed on the same outputs and recorded beside it (not optimized).
    ``reduce``, if given, is applied to each batch's first output with that batch's inputs, and what it returns is
    concatenated instead: a language model's logits (batch x tokens x vocabulary) become each token's
    log-probability and top choice, so that scoring never holds every sample's logits at once.
    """

    inputs: tuple[np.ndarray, ...]
    metric: Callable[[np.ndarray], float]
    metric_name: str = "accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    batch_size: int = 64
    extra_metrics: Mapping[str, Callable[[np.ndarray], float]] = field(default_factory=dict)
    reduce: Callable[[np.ndarray, tuple[np.ndarray, ...]], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"`direction` must be 'maximize' or 'minimize', but got {self.direction!r}.")
        if not self.inputs or len({len(a) for a in self.inputs}) != 1:
            raise ValueError("`inputs` must be a non-empty tuple of arrays with the same number of samples.")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size >= 1` must hold, but got {self.batch_size=}.")


@dataclass(frozen=True)
class Task:
    """What `tuner` needs from the user.

    model: the trained fp32 model (it is copied, never modified).
    example_inputs: one batch used for export and latency (first axis is the batch axis).
    calibration_inputs: batches for int8 calibration and BatchNorm recalibration after pruning.
    evaluation: held-out data and metric.
    output_layers: module names whose outputs are the model's outputs; pruning never shrinks them.
        Default: the last Conv/Linear module.
    finetune: optional; with recovery ``task``, called on each pruned copy to fine-tune it in place.
    dynamic_axes: optional; per example input, its axes other than the batch axis (0) that vary at run time,
        named (``{1: "sequence"}``; inputs that share a name share the size). A decoder with a KV cache is
        exported with its token and cache lengths dynamic, so one artifact serves prefill and decode.
    latency_phases: optional; further inputs, by phase name, timed on the same artifact after ``example_inputs``
        and recorded beside its latency (not optimized): a decoder's prefill of a prompt beside its decode step.
        Each holds one tensor per example input, at the batch size it is to be timed at.
    """

    model: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    calibration_inputs: Sequence[tuple[torch.Tensor, ...]]
    evaluation: Evaluation
    output_layers: tuple[str, ...] = field(default=())
    finetune: Callable[[torch.nn.Module], Any] | None = None  # recovery "task": fine-tunes a pruned model in place
    dynamic_axes: tuple[Mapping[int, str], ...] = ()
    latency_phases: Mapping[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.example_inputs, tuple) or not all(
            isinstance(t, torch.Tensor) for t in self.example_inputs
        ):
            raise TypeError("`example_inputs` must be a tuple of torch.Tensor.")
        if self.dynamic_axes and (len(self.dynamic_axes) != len(self.example_inputs) or any(
                not isinstance(axis, int) or not 0 < axis < t.dim() or not isinstance(name, str) or name == "batch"
                for axes, t in zip(self.dynamic_axes, self.example_inputs) for axis, name in axes.items())):
            raise ValueError("`dynamic_axes` must hold one mapping per example input, from an axis other than 0 "
                             f"(the batch axis) to a name other than 'batch', but got {self.dynamic_axes!r}.")
        for phase, inputs in self.latency_phases.items():
            if not isinstance(inputs, tuple) or len(inputs) != len(self.example_inputs) or not all(
                    isinstance(t, torch.Tensor) for t in inputs):
                raise ValueError(f"`latency_phases[{phase!r}]` must be a tuple of {len(self.example_inputs)} "
                                 "torch.Tensor, one per example input.")
        if len(self.calibration_inputs) == 0:
            raise ValueError("`calibration_inputs` must hold at least one batch.")
        if not self.output_layers:
            last = [n for n, m in self.model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
            if not last:
                raise ValueError("the model has no Conv2d or Linear layer to tune.")
            object.__setattr__(self, "output_layers", (last[-1],))


def check_forward(task: Task, spec: str) -> None:
    """Run the model once on its example inputs: a model that cannot is the user's to fix, said in one line."""
    try:
        with torch.no_grad():
            task.model.eval()(*task.example_inputs)
    except Exception as exc:
        raise TaskError(f"task {spec!r}: the model's forward on example_inputs raised{where(exc)}: "
                        f"{type(exc).__name__}: {exc}") from exc


# A model whose pruning changes the shapes its inputs must have (a decoder's KV cache loses the heads of pruned
# key/value groups) says so with a method ``fit_inputs(inputs) -> inputs``: the task's inputs, built for the model as
# trained, cut to what this (pruned) copy takes. Other models take the task's inputs as they are.
FIT_INPUTS = "fit_inputs"


def fits_inputs(model: torch.nn.Module) -> bool:
    """Whether ``model`` adapts the task's inputs to its pruned copies (see ``FIT_INPUTS``)."""
    return callable(getattr(model, FIT_INPUTS, None))


def model_inputs(model: torch.nn.Module, inputs: Sequence[Any]) -> tuple[Any, ...]:
    """``inputs`` as ``model`` (a pruned copy, say) takes them: its ``fit_inputs``, if it has one."""
    return tuple(getattr(model, FIT_INPUTS)(tuple(inputs))) if fits_inputs(model) else tuple(inputs)


def fit_to_declared(arrays: Sequence[np.ndarray], shapes: Sequence[Sequence[Any] | None]) -> tuple[np.ndarray, ...]:
    """Each array cut to the fixed sizes its ONNX input declares, where those are smaller (a pruned decoder's
    export declares the key/value heads its cache keeps; ``shapes``: ORT's ``NodeArg.shape``, a name or None
    for a dynamic axis). The batch axis is never cut. The same cut as a decoder's ``fit_inputs`` makes in torch,
    since both keep the leading entries."""
    fitted = []
    for array, shape in zip(arrays, shapes):
        if shape is not None and len(shape) == array.ndim:
            cut = [slice(0, d) if isinstance(d, int) and 0 < d < n else slice(None)
                   for d, n in zip(shape[1:], array.shape[1:])]
            array = array[(slice(None), *cut)] if any(c != slice(None) for c in cut) else array
        fitted.append(array)
    return tuple(fitted)


def graph_input_shapes(graph) -> list[list[Any]]:
    """ORT's ``NodeArg.shape`` of each input of an ONNX graph (its weights left out): a fixed size or None."""
    weights = {t.name for t in graph.initializer}
    return [[d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
            for i in graph.input if i.name not in weights]


def first_output(out: Any) -> torch.Tensor:
    """A model's first tensor output (of a tuple, a list or a dict of outputs), as its ONNX export's first output
    is: what the metric scores and distillation matches."""
    while not isinstance(out, torch.Tensor):
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out


def declared_shapes(task: Task, model: torch.nn.Module) -> list[list[int | None]]:
    """The input shapes a (pruned) copy of the task's model takes, as an ONNX export of it declares them: fixed
    sizes, None for the batch axis and the task's dynamic axes (what :func:`fit_to_declared` cuts to)."""
    axes = task.dynamic_axes or tuple({} for _ in task.example_inputs)
    return [[None if i == 0 or i in dynamic else int(n) for i, n in enumerate(t.shape)]
            for t, dynamic in zip(model_inputs(model, task.example_inputs), axes)]
