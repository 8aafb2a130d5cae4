"""PyTorch's own runtime as a target (GPU or CPU): per-layer precision kinds, and the deployable artifact.

A kind is one :class:`TorchKind` in ``TORCH_KINDS``: the layer types it applies to, why a device cannot run
it fast (``refusal``), and how a layer is rewritten to run in it (``wrap``). As on ONNX Runtime, a kind the
device would run slower than fp32 is refused with its reason before anything is built.

=============  ==========================================================  ===================================
kind           what a layer becomes                                        refused where
=============  ==========================================================  ===================================
fp32           the layer as trained                                        never
tf32           fp32 storage, matmuls on TF32 tensor cores (a whole-model   CPUs (no TF32 units)
               setting of the backend: uniform only)
bf16           weights in bfloat16; input cast in, output cast back        CPUs without AVX512-BF16/AMX
fp16           weights in float16; input cast in, output cast back         CPUs without AVX512-FP16/AMX-FP16
fp8-e4m3       weights in float8 e4m3 (one scale per output channel),      CPUs; GPUs below compute
               activations scaled per row at run time, one scaled matmul   capability 8.9 (Ada, Hopper)
               (``torch._scaled_mm``, bf16 out)                            Linear layers only
=============  ==========================================================  ===================================

A model whose layers all take the same float kind is cast whole (norms and embeddings too), which is how such
models are deployed; a mix wraps each layer, casting at its edges.

The artifact is what a user deploys from PyTorch: ``torch.export`` then AOTInductor into a ``.pt2`` package
(:func:`package`), loaded with :func:`load_package`; where export fails, ``torch.compile`` of the same module
(:func:`compiled`), which is not a file. CUDA graphs (:func:`cuda_graphed`) replay a captured call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tuner.core.vocab import COMPILE_MODES

FP8_MAX = 448.0  # largest finite float8 e4m3fn value


@dataclass(frozen=True)
class TorchKind:
    name: str
    description: str
    dtype: torch.dtype  # what the layer's weights are stored in
    layer_types: tuple[type[nn.Module], ...]
    refusal: Callable[[torch.device], str | None]  # why this device cannot run the kind fast, or None
    wrap: Callable[[nn.Module], nn.Module]  # the layer, rewritten to run in this kind
    uniform_only: bool = False  # a backend-wide setting, not a per-layer one


def _cuda_only(name: str, why: str) -> Callable[[torch.device], str | None]:
    def refusal(device: torch.device) -> str | None:
        return None if device.type == "cuda" else f"{name} runs on CUDA GPUs only ({why}); this device is {device}"
    return refusal


def _float_refusal(dtype: torch.dtype) -> Callable[[torch.device], str | None]:
    def refusal(device: torch.device) -> str | None:
        if device.type == "cuda":
            if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                return "bf16 needs a GPU of compute capability 8.0 or newer"
            return None
        supported = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if dtype == torch.bfloat16
                     else torch.ops.mkldnn._is_mkldnn_fp16_supported())
        isa = "AVX512-BF16 or AMX" if dtype == torch.bfloat16 else "AVX512-FP16 or AMX-FP16"
        return None if supported else (f"{str(dtype).removeprefix('torch.')} on this CPU has no {isa}: oneDNN "
                                       f"would emulate it, slower than fp32")
    return refusal


def _fp8_refusal(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"fp8-e4m3 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); this device is {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"fp8-e4m3 needs compute capability 8.9 or newer; this GPU has {major}.{minor}"
    return None


class CastLayer(nn.Module):
    """A layer whose weights are stored in ``dtype``: its input is cast in, its output back to the input's dtype."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.layer = layer.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.to(self.dtype)).to(x.dtype)


class Fp8Linear(nn.Module):
    """A Linear layer as one fp8 scaled matmul: e4m3 weights scaled per output channel, e4m3 activations scaled
    per row at run time, bf16 accumulation output."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        weight = layer.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out): scale_b of _scaled_mm
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().to(torch.bfloat16),
                                                                 requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
        quantized = (rows.float() / scale).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(quantized, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                               bias=self.bias, out_dtype=torch.bfloat16)
        return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


def _fp8_wrap(layer: nn.Module) -> nn.Module:
    out_features, in_features = layer.weight.shape
    if in_features % 16 or out_features % 16:
        raise ValueError(f"fp8-e4m3 needs Linear sizes that are multiples of 16 (this one is {in_features} -> "
                         f"{out_features})")
    return Fp8Linear(layer)


LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
TORCH_KINDS: dict[str, TorchKind] = {k.name: k for k in (
    TorchKind("fp32", "fp32 (as trained)", torch.float32, LAYERS, lambda device: None, lambda layer: layer),
    TorchKind("tf32", "fp32 weights, TF32 tensor-core matmuls (uniform only)", torch.float32, LAYERS,
              _cuda_only("tf32", "TF32 is a tensor-core format"), lambda layer: layer, uniform_only=True),
    TorchKind("bf16", "bfloat16 weights and compute", torch.bfloat16, LAYERS, _float_refusal(torch.bfloat16),
              lambda layer: CastLayer(layer, torch.bfloat16)),
    TorchKind("fp16", "float16 weights and compute", torch.float16, LAYERS, _float_refusal(torch.float16),
              lambda layer: CastLayer(layer, torch.float16)),
    TorchKind("fp8-e4m3", "float8 e4m3 weights and activations, one scaled matmul (Linear only)",
              torch.float8_e4m3fn, (nn.Linear,), _fp8_refusal, _fp8_wrap),
)}


class KindRefused(ValueError):
    """A kind this device cannot run fast, or a layer the kind does not apply to; the message says why."""


def check_kinds(precision: Mapping[str, str], layers: Mapping[str, nn.Module], device: torch.device) -> None:
    """Refuse, before anything is built, a choice the device cannot run fast or a layer the kind does not fit."""
    used = set(precision.values())
    unknown = sorted(used - set(TORCH_KINDS))
    if unknown:
        raise KindRefused(f"unknown torch precision kind {unknown[0]!r}; known: {sorted(TORCH_KINDS)}")
    for layer, name in precision.items():
        if layer not in layers:
            raise KindRefused(f"layer {layer!r} is not a {', '.join(t.__name__ for t in LAYERS)} of the model")
        if not isinstance(layers[layer], TORCH_KINDS[name].layer_types):
            raise KindRefused(f"kind {name!r} does not apply to layer {layer!r} ({type(layers[layer]).__name__})")
    for name in sorted(used):
        kind = TORCH_KINDS[name]
        if kind.uniform_only and len(used) > 1:
            raise KindRefused(f"kind {name!r} is a backend-wide setting: every layer takes it or none "
                              f"(this candidate mixes {sorted(used)})")
        if (reason := kind.refusal(device)) is not None:
            raise KindRefused(f"kind {name!r} refused: {reason}")


def precision_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a torch-runtime candidate chooses a precision for, by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LAYERS)}


class EdgeCast(nn.Module):
    """A model cast whole to ``dtype``; float inputs cast in, outputs cast back to fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        return self.model(*cast).float()


def apply_precision(model: nn.Module, precision: Mapping[str, str], device: torch.device) -> nn.Module:
    """``model`` (modified in place) with each named layer in its kind; layers not named stay fp32."""
    layers = precision_layers(model)
    check_kinds(precision, layers, device)
    used = set(precision.values())
    if len(used) == 1 and len(precision) == len(layers):
        kind = TORCH_KINDS[used.pop()]
        if kind.dtype in (torch.bfloat16, torch.float16):
            return EdgeCast(model, kind.dtype)
    for name, choice in precision.items():
        if choice in ("fp32", "tf32"):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, TORCH_KINDS[choice].wrap(layers[name]))
    return model


@contextmanager
def matmul_precision(precision: Mapping[str, str]):
    """TF32 on for a model whose layers take it (the backend's setting), restored afterwards."""
    tf32 = bool(precision) and set(precision.values()) == {"tf32"}
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def package(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: str | Path, mode: str = "default",
            dynamic_batch: bool = True) -> Path:
    """``torch.export`` then AOTInductor: a ``.pt2`` package at ``path`` (the batch dimension dynamic, so that
    one package serves every batch size)."""
    if mode not in COMPILE_MODES[1:]:
        raise ValueError(f"compile mode for a package must be one of {COMPILE_MODES[1:]}, not {mode!r}")
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dynamic = tuple({0: batch} for _ in example_inputs)
        parameters = inspect.signature(model.forward).parameters.values()
        if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters):
            dynamic = (dynamic,)  # forward(*inputs): the inputs are one argument to export
    exported = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic)
    configs = {"max_autotune": mode == "max-autotune"}
    return Path(torch._inductor.aoti_compile_and_package(exported, package_path=str(path), inductor_configs=configs))


def load_package(path: str | Path) -> Callable[..., torch.Tensor]:
    return torch._inductor.aoti_load_package(str(path))


def compiled(model: nn.Module, mode: str = "default") -> Callable[..., torch.Tensor]:
    """The fallback where export fails: ``torch.compile`` (``none``: eager)."""
    if mode == "none":
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)


def cuda_graphed(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], warmup: int = 3
                 ) -> Callable[..., torch.Tensor]:
    """``fn`` captured once on ``inputs``' shapes as a CUDA graph; each call copies its inputs into the captured
    buffers and replays (shapes other than the captured ones are refused)."""
    static = [x.clone() for x in inputs]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)

    def replay(*args: torch.Tensor) -> torch.Tensor:
        for buffer, x in zip(static, args, strict=True):
            if buffer.shape != x.shape:
                raise ValueError(f"a CUDA graph replays the shapes it captured ({tuple(buffer.shape)}), "
                                 f"not {tuple(x.shape)}")
            buffer.copy_(x)
        graph.replay()
        return out

    return replay
