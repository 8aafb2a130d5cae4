"""Candidate: one point of the search space as frozen plain data with a stable hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

OPT_LEVELS = ("disable", "basic", "extended", "all")
BITS = (8, 32)


@dataclass(frozen=True)
class Candidate:
    """Per-layer bit-widths, per-group pruning ratios and the ORT graph-optimization level.

    bits: layer name -> 8 (static int8 QDQ) or 32 (fp32). Layers not listed stay fp32.
    prune: pruning-group name -> ratio of output channels removed (0 leaves the group alone).
    opt_level: ORT graph-optimization level the artifact is built and run with.
    """

    bits: tuple[tuple[str, int], ...] = ()
    prune: tuple[tuple[str, float], ...] = ()
    opt_level: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", tuple(sorted((str(k), int(v)) for k, v in dict(self.bits).items())))
        object.__setattr__(self, "prune", tuple(sorted((str(k), float(v)) for k, v in dict(self.prune).items())))
        for name, b in self.bits:
            if b not in BITS:
                raise ValueError(f"bits of layer {name!r} must be one of {BITS}, but got {b}.")
        for name, r in self.prune:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"pruning ratio of group {name!r} must be in [0, 1), but got {r}.")
        if self.opt_level not in OPT_LEVELS:
            raise ValueError(f"opt_level must be one of {OPT_LEVELS}, but got {self.opt_level!r}.")

    @property
    def int8_layers(self) -> list[str]:
        return [name for name, b in self.bits if b == 8]

    @property
    def is_pruned(self) -> bool:
        return any(r > 0 for _, r in self.prune)

    def to_dict(self) -> dict[str, Any]:
        return {"bits": dict(self.bits), "prune": dict(self.prune), "opt_level": self.opt_level}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Candidate":
        return cls(bits=tuple(data.get("bits", {}).items()), prune=tuple(data.get("prune", {}).items()),
                   opt_level=data.get("opt_level", "all"))

    def key(self, task_fingerprint: str) -> str:
        """Stable artifact key: the same task and candidate always give the same key."""
        payload = json.dumps({"task": task_fingerprint, "candidate": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def summary(self) -> str:
        """A short human-readable description, e.g. ``int8 9/12, pruned 2 groups, opt=all``."""
        n8 = len(self.int8_layers)
        pruned = [r for _, r in self.prune if r > 0]
        prune_txt = f"pruned {len(pruned)} groups (max {max(pruned):.0%})" if pruned else "unpruned"
        return f"int8 {n8}/{len(self.bits)}, {prune_txt}, opt={self.opt_level}"
