"""A study on PyTorch's own runtime (``runtime: torch``): its layers, the kinds its device runs fast, the compile
choices of its space, and the latency model its plan spaces mixes with.

The layers are the model's ``Linear`` and ``Conv`` modules, named by class (no ONNX export is read); the kinds are
the torch kinds of :mod:`tuner.core.precision` less those :mod:`tuner.build.torch_runtime` refuses on the device,
each refusal said with its reason. The plan's latency model is each layer's share of the searched layers' FLOPs
times what its kind saved as a uniform reference: the ONNX Runtime profile the other runtime uses does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import optuna
import torch
from optuna.trial import TrialState

from tuner.build.torch_runtime import TORCH_KINDS, precision_layers
from tuner.core.candidate import Candidate
from tuner.core.errors import ExperimentError, SpaceError
from tuner.core.precision import FP8_E4M3, FP32, TORCH_LAYER_OPS
from tuner.core.records import TrialMeta
from tuner.experiment import Experiment
from tuner.space.file import Fusion, SpaceFile


def check_device(experiment: Experiment) -> torch.device:
    """The experiment's device, refused before any work if this machine has none."""
    device = torch.device(experiment.torch.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError(f"{experiment.source or experiment.name}: field 'torch.device': 'cuda', but this "
                              f"machine's torch ({torch.__version__}) sees no CUDA GPU; use 'cpu'.")
    return device


def torch_layer_ops(model: torch.nn.Module) -> dict[str, str]:
    """Each searched layer and its class (``Linear``, ``Conv2d``): what decides its precision choices."""
    return {name: type(m).__name__ for name, m in precision_layers(model).items()
            if type(m).__name__ in TORCH_LAYER_OPS}


def refusals(device: torch.device) -> dict[str, str]:
    """The per-layer torch kinds this device cannot run fast, with why."""
    return {name: reason for name, kind in TORCH_KINDS.items()
            if not kind.uniform_only and (reason := kind.refusal(device)) is not None}


def unfit_layers(model: torch.nn.Module) -> dict[str, set[str]]:
    """Layers a kind cannot take for their shape: fp8's scaled matmul needs Linear sizes in multiples of 16."""
    return {name: {FP8_E4M3} for name, m in precision_layers(model).items()
            if isinstance(m, torch.nn.Linear) and (m.in_features % 16 or m.out_features % 16)}


def torch_space(space: SpaceFile, device: torch.device, auto: bool, log: Callable[[str], None],
                unfit: Mapping[str, set[str]] | None = None) -> SpaceFile:
    """The space as this device runs it. ``auto``: refused kinds left out (each said once), kinds a layer's shape
    cannot take (``unfit``) left out of its rule, and the default compile choices; a file offering a refused kind
    or ONNX Runtime fusion choices is an error naming the rule."""
    refused = refusals(device)
    on_gpu = device.type == "cuda"
    default = Fusion(compile_modes=("none", "default"), cuda_graphs=(False, True) if on_gpu else (False,),
                     tf32=(False, True) if on_gpu else (False,))
    if auto:
        for name in sorted({c for rule in space.rules for c in rule.precision} & set(refused)):
            log(f"not offered on {device}: {name} ({refused[name]})")
        unfit = unfit or {}
        for name, kinds in unfit.items():
            log(f"not offered to {name}: {', '.join(sorted(kinds))} (its sizes are not multiples of 16)")
        rules = tuple(replace(rule, precision=tuple(c for c in rule.precision if c not in refused
                                                    and c not in unfit.get(rule.match, ()))) for rule in space.rules)
        return replace(space, rules=rules, fusion=default)
    for rule in space.rules:
        for choice in rule.precision:
            if choice in refused:
                raise SpaceError(f"{space.path}: {rule.label}: precision {choice!r} is refused on {device}: "
                                 f"{refused[choice]}.")
    fusion = space.fusion
    if not fusion.torch_runtime:
        if fusion != Fusion():
            raise SpaceError(f"{space.path}: fusion: opt_level, transformer_fusions and disable are ONNX Runtime "
                             "choices; with runtime torch give compile_mode (and cuda_graphs, tf32).")
        fusion = default
    if not on_gpu and (True in fusion.cuda_graphs or True in fusion.tf32):
        raise SpaceError(f"{space.path}: fusion: cuda_graphs and tf32 need torch.device cuda (this experiment "
                         f"runs on {device}).")
    return replace(space, fusion=fusion)


def check_torch_rules(space: SpaceFile, layer_ops: Mapping[str, str]) -> None:
    """A space for ONNX Runtime (int8, int4 choices) given to a torch study: said before the space resolves."""
    torch_kinds = set(TORCH_KINDS) | {FP32}
    for rule in space.rules:
        other = [c for c in rule.precision if c not in torch_kinds]
        if other and not rule.skip:
            raise SpaceError(f"{space.path}: {rule.label}: {other} are ONNX Runtime kinds; on runtime torch the "
                             f"layers ({', '.join(sorted(set(layer_ops.values())))}) take "
                             f"{sorted(k for k, v in TORCH_KINDS.items() if not v.uniform_only)}.")


def layer_flops(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Multiply-adds x 2 of each searched layer on one batch of the example inputs (read from forward hooks)."""
    flops: dict[str, float] = {}

    def hook(name: str):
        def count(module, inputs, output) -> None:
            if isinstance(module, torch.nn.Linear):
                flops[name] = 2.0 * output.numel() * module.in_features
            else:  # a convolution: each output element reads in_channels / groups x kernel inputs
                per = module.in_channels // module.groups * torch.Size(module.kernel_size).numel()
                flops[name] = 2.0 * output.numel() * per
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in precision_layers(model).items()]
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return flops


@dataclass(frozen=True)
class FlopShareLatency:
    """Latency of a mix: fp32's, less each layer's FLOPs share of what its kind's uniform reference saved."""

    fp32_ms: float
    kind_ms: Mapping[str, float]
    shares: Mapping[str, float]

    def predict(self, candidate: Candidate) -> float:
        saved = sum(self.shares.get(layer, 0.0) * (self.fp32_ms - self.kind_ms.get(choice, self.fp32_ms))
                    for layer, choice in candidate.precision)
        return self.fp32_ms - saved


def flop_share_latency(study: optuna.Study, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]
                       ) -> FlopShareLatency:
    """The model from the study's uniform reference trials and the model's FLOPs per layer."""
    kind_ms = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        meta = TrialMeta.of(trial)
        if meta.reference:
            kind_ms[meta.reference_kind] = trial.values[1]
    if FP32 not in kind_ms:
        raise ValueError("the fp32 reference trial is not complete")
    flops = layer_flops(model, example_inputs)
    total = sum(flops.values()) or 1.0
    return FlopShareLatency(kind_ms[FP32], kind_ms, {name: f / total for name, f in flops.items()})
