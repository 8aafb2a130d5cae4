"""Candidate: one point of the search space as frozen plain data with a stable hash."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuner.core.precision import FP32, KINDS, PrecisionError, check_precision, family
from tuner.core.vocab import (
    COMPILE_MODES,
    IMPORTANCE_METHODS,
    OPT_LEVELS,
    RECOVERY_METHODS,
)


@dataclass(frozen=True)
class Candidate:
    """Per-layer precision, per-group pruning ratios and fusion choices.

    precision: layer name -> precision choice (:mod:`tuner.core.precision`). Layers not listed stay fp32.
    prune: pruning-group name -> ratio of output channels removed (0 leaves the group alone).
    opt_level: ORT graph-optimization level the artifact is built and run with.
    fusions: transformer fusions applied to the ONNX file before quantization.
    disabled_optimizers: ORT session graph transformers turned off when the artifact is run.
    recovery: what repairs a pruned model (:mod:`tuner.build.recovery`); ignored when nothing is pruned.
    compile_mode, cuda_graphs, tf32: PyTorch's runtime only (``compile_mode`` None: an ONNX Runtime candidate):
        how the model is compiled, whether calls replay a captured CUDA graph, and whether fp32 matmuls run on
        TF32 tensor cores (a whole-model setting of the backend).
    """

    precision: tuple[tuple[str, str], ...] = ()
    prune: tuple[tuple[str, float], ...] = ()
    opt_level: str = "all"
    fusions: tuple[str, ...] = ()
    disabled_optimizers: tuple[str, ...] = ()
    recovery: str = "batchnorm"
    importance: str = "magnitude"
    compile_mode: str | None = None
    cuda_graphs: bool = False
    tf32: bool = False
    recovery_budget: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "precision", tuple(sorted((str(k), str(v)) for k, v in dict(self.precision).items())))
        set_(self, "prune", tuple(sorted((str(k), float(v)) for k, v in dict(self.prune).items())))
        set_(self, "fusions", tuple(sorted(set(self.fusions))))
        set_(self, "disabled_optimizers", tuple(sorted(set(self.disabled_optimizers))))
        if not any(r > 0 for _, r in self.prune):  # nothing pruned, nothing to recover: one key per model
            set_(self, "recovery", "none")
            set_(self, "importance", "magnitude")
        if self.recovery != "distill":  # only distillation has a budget to multiply
            set_(self, "recovery_budget", 1)
        if not isinstance(self.recovery_budget, int) or self.recovery_budget < 1:
            raise ValueError(f"recovery_budget must be a whole number >= 1, but got {self.recovery_budget!r}.")
        for name, choice in self.precision:
            try:
                check_precision(choice)
            except PrecisionError as exc:
                raise ValueError(f"layer {name!r}: {exc}") from None
        for name, r in self.prune:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"pruning ratio of group {name!r} must be in [0, 1), but got {r}.")
        if self.opt_level not in OPT_LEVELS:
            raise ValueError(f"opt_level must be one of {OPT_LEVELS}, but got {self.opt_level!r}.")
        if self.importance not in IMPORTANCE_METHODS:
            raise ValueError(f"importance must be one of {sorted(IMPORTANCE_METHODS)}, but got {self.importance!r}.")
        if self.recovery not in RECOVERY_METHODS:
            raise ValueError(f"recovery must be one of {RECOVERY_METHODS}, but got {self.recovery!r}.")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, but got {self.compile_mode!r}.")
        if self.compile_mode is None and (self.cuda_graphs or self.tf32):
            raise ValueError("cuda_graphs and tf32 are choices of the torch runtime: give a compile_mode too.")

    @property
    def on_torch(self) -> bool:
        """Built and run by PyTorch's own runtime, not ONNX Runtime."""
        return self.compile_mode is not None

    @property
    def quantized_layers(self) -> dict[str, str]:
        return {name: choice for name, choice in self.precision if choice != FP32}

    @property
    def is_pruned(self) -> bool:
        return any(r > 0 for _, r in self.prune)

    def to_dict(self) -> dict[str, Any]:
        torch_runtime = ({"compile_mode": self.compile_mode, "cuda_graphs": self.cuda_graphs, "tf32": self.tf32}
                         if self.on_torch else {})  # absent on ONNX Runtime: its keys stay as they were
        budget = {"recovery_budget": self.recovery_budget} if self.recovery_budget != 1 else {}
        return {"precision": dict(self.precision), "prune": dict(self.prune), "opt_level": self.opt_level,
                "fusions": list(self.fusions), "disabled_optimizers": list(self.disabled_optimizers),
                "recovery": self.recovery, "importance": self.importance, **torch_runtime, **budget}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(precision=tuple(data.get("precision", {}).items()), prune=tuple(data.get("prune", {}).items()),
                   opt_level=data.get("opt_level", "all"), fusions=tuple(data.get("fusions", ())),
                   disabled_optimizers=tuple(data.get("disabled_optimizers", ())),
                   recovery=data.get("recovery", "batchnorm"), importance=data.get("importance", "magnitude"),
                   compile_mode=data.get("compile_mode"), cuda_graphs=bool(data.get("cuda_graphs", False)),
                   tf32=bool(data.get("tf32", False)), recovery_budget=int(data.get("recovery_budget", 1)))

    def key(self, task_fingerprint: str) -> str:
        """Stable artifact key: the same task and candidate always give the same key."""
        payload = json.dumps({"task": task_fingerprint, "candidate": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def prune_key(self, task_fingerprint: str) -> str:
        """Key of the pruned (and recovered) fp32 model, shared by every candidate that prunes alike."""
        payload = json.dumps({"task": task_fingerprint, "prune": dict(self.prune), "recovery": self.recovery,
                              **({"importance": self.importance} if self.importance != "magnitude" else {}),
                              **({"recovery_budget": self.recovery_budget} if self.recovery_budget != 1 else {})},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def precision_counts(self) -> dict[str, int]:
        """Layers per precision family, e.g. ``{"fp32": 3, "int8": 30, "int4": 3}``."""
        return dict(Counter(family(choice) for _, choice in self.precision))

    def summary(self) -> str:
        """A short human-readable description, e.g. ``int8 30, int4 3, fp32 3; pruned 2 groups; opt=all``."""
        counts = self.precision_counts()
        order = sorted(KINDS, key=lambda name: KINDS[name].summary_order)
        prec = ", ".join(f"{k} {counts[k]}" for k in order if counts.get(k)) or "fp32"
        pruned = [r for _, r in self.prune if r > 0]
        recovery = self.recovery + (f" x{self.recovery_budget}" if self.recovery_budget != 1 else "")
        prune_txt = (f"pruned {len(pruned)} groups (max {max(pruned):.0%}, {recovery})" if pruned
                     else "unpruned")
        if self.on_torch:
            runtime = [f"compile={self.compile_mode}"] + ["cuda graphs"] * self.cuda_graphs + ["tf32"] * self.tf32
            return "; ".join([prec, prune_txt, *runtime])
        parts = [prec, prune_txt, f"opt={self.opt_level}"]
        if self.fusions:
            parts.append("fused " + "+".join(self.fusions))
        if self.disabled_optimizers:
            parts.append("off " + "+".join(self.disabled_optimizers))
        return "; ".join(parts)
