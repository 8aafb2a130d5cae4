"""Search-space files: ordered YAML rules on module names, their schema and parser.

A space file looks like::

    layers:                       # ordered; the first rule whose `match` fits a layer wins
      - match: fc                 # exact module name ...
        precision: [fp32, int8]
      - match: "re:layer1\\..*"   # ... or a regex after `re:` (full match)
        skip: true                # leave these layers alone: fp32, unpruned
      - match: "re:.*"
        precision: [fp32, int8, int8-dynamic, int4-b32]   # see tuner.core.precision
        prune: {low: 0.0, high: 0.5, step: 0.125}
    fusion:
      opt_level: [extended, all]  # ORT graph-optimization levels to try
      transformer_fusions: [skip_layer_norm, bias_gelu]   # each one searched on/off, before quantization
      disable: [NchwcTransformer] # ORT session optimizers, each one searched on/off

With ``runtime: torch`` in the experiment, layers are torch modules (``Linear``, ``Conv2d``), their choices the
torch kinds (``fp32``, ``bf16``, ``fp16``, ``fp8-e4m3``), and the fusion section says how the model is compiled::

    fusion:
      compile_mode: [none, default]   # torch.compile / AOTInductor mode ("none": eager)
      cuda_graphs: [false, true]      # replay a captured CUDA graph (CUDA only)
      tf32: [false, true]             # fp32 matmuls on TF32 tensor cores (CUDA only)

Layers that no rule matches are left alone too. A precision choice is offered to a layer only where its
ONNX op type can run it (int4 and int8-dynamic: MatMul only); a choice that fits none of a rule's layers
is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.build.fusion import (
    MERGING_FUSIONS,
    TRANSFORMER_FUSIONS,
    session_optimizer_names,
)
from tuner.core.errors import SpaceError
from tuner.core.precision import FP32, PrecisionError, check_precision
from tuner.core.vocab import (
    COMPILE_MODES,
    IMPORTANCE_METHODS,
    OPT_LEVELS,
    RECOVERY_METHODS,
)
from tuner.core.yamlfile import read_mapping


@dataclass(frozen=True)
class PruneRange:
    low: float
    high: float
    step: float

    def __str__(self) -> str:
        return f"{self.low}" if self.low == self.high else f"{self.low}..{self.high} step {self.step}"

    def values(self) -> list[float]:
        n = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, 6) for i in range(n + 1)]


@dataclass(frozen=True)
class Rule:
    index: int
    match: str
    skip: bool = False
    precision: tuple[str, ...] = (FP32,)
    prune: PruneRange | None = None

    @property
    def label(self) -> str:
        return f"layers[{self.index}] (match {self.match!r})"

    def matches(self, name: str) -> bool:
        if self.match.startswith("re:"):
            return re.fullmatch(self.match[3:], name) is not None
        return self.match == name


@dataclass(frozen=True)
class Fusion:
    opt_levels: tuple[str, ...] = ("all",)
    transformer_fusions: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    # PyTorch's runtime (empty on ONNX Runtime): compile modes, and the CUDA-graph and TF32 switches' values
    compile_modes: tuple[str, ...] = ()
    cuda_graphs: tuple[bool, ...] = ()
    tf32: tuple[bool, ...] = ()

    @property
    def torch_runtime(self) -> bool:
        return bool(self.compile_modes)


@dataclass(frozen=True)
class SpaceFile:
    path: str
    rules: tuple[Rule, ...]
    fusion: Fusion
    recovery: tuple[str, ...] = ("batchnorm",)
    importance: tuple[str, ...] = ("magnitude",)

    def to_dict(self) -> dict[str, Any]:
        """The file's content, as ``load_space_file`` reads it back."""
        def rule(r: Rule) -> dict[str, Any]:
            if r.skip:
                return {"match": r.match, "skip": True}
            prune = {} if r.prune is None else {"prune": {"low": r.prune.low, "high": r.prune.high,
                                                          "step": r.prune.step}}
            return {"match": r.match, "precision": list(r.precision), **prune}
        fusion = {"opt_level": list(self.fusion.opt_levels)}
        if self.fusion.transformer_fusions:
            fusion["transformer_fusions"] = list(self.fusion.transformer_fusions)
        if self.fusion.disable:
            fusion["disable"] = list(self.fusion.disable)
        if self.fusion.torch_runtime:
            fusion = {"compile_mode": list(self.fusion.compile_modes), "cuda_graphs": list(self.fusion.cuda_graphs),
                      "tf32": list(self.fusion.tf32)}
        return {"layers": [rule(r) for r in self.rules], "fusion": fusion, "recovery": list(self.recovery),
                "importance": list(self.importance)}


_RULE_KEYS = {"match", "skip", "precision", "prune"}
_PRUNE_KEYS = {"low", "high", "step"}
MAX_PRUNE_RATIO = 0.9


def load_space_file(path: str | Path) -> SpaceFile:
    """Parse and validate a space file (everything that can be checked without the model)."""
    path = str(path)
    data = read_mapping(path, "search-space", SpaceError)
    unknown = set(data) - {"layers", "fusion", "recovery", "importance"}
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: ['fusion', 'importance', "
                         "'layers', 'recovery'].")
    raw_rules = data.get("layers") or []
    if not isinstance(raw_rules, list):
        raise SpaceError(f"{path}: 'layers' must be a list of rules, got {type(raw_rules).__name__}.")
    rules = tuple(_parse_rule(path, i, raw) for i, raw in enumerate(raw_rules))
    recovery = data.get("recovery", ["batchnorm"])
    recovery = [recovery] if isinstance(recovery, str) else recovery
    if not isinstance(recovery, list) or not recovery or any(m not in RECOVERY_METHODS for m in recovery):
        raise SpaceError(f"{path}: recovery must be one or more of {list(RECOVERY_METHODS)} (what repairs a pruned "
                         f"model), got {data.get('recovery')!r}.")
    importance = data.get("importance", ["magnitude"])
    importance = [importance] if isinstance(importance, str) else importance
    if not isinstance(importance, list) or not importance or any(m not in IMPORTANCE_METHODS for m in importance):
        raise SpaceError(f"{path}: importance must be one or more of {sorted(IMPORTANCE_METHODS)} (how pruning ranks "
                         f"channels), got {data.get('importance')!r}.")
    return SpaceFile(path, rules, _parse_fusion(path, data.get("fusion") or {}), tuple(dict.fromkeys(recovery)),
                     tuple(dict.fromkeys(importance)))


def _parse_rule(path: str, index: int, raw: Any) -> Rule:
    where = f"{path}: layers[{index}]"
    if not isinstance(raw, dict) or "match" not in raw:
        raise SpaceError(f"{where}: a rule must be a mapping with a 'match' key, got {raw!r}.")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}.")
    match = raw["match"]
    if not isinstance(match, str) or not match or match == "re:":
        raise SpaceError(f"{where}: 'match' must be a module name or 're:<regex>', got {match!r}.")
    where = f"{path}: layers[{index}] (match {match!r})"
    if match.startswith("re:"):
        try:
            re.compile(match[3:])
        except re.error as exc:
            raise SpaceError(f"{where}: invalid regex {match[3:]!r}: {exc}.") from None
    skip = raw.get("skip", False)
    if not isinstance(skip, bool):
        raise SpaceError(f"{where}: 'skip' must be true or false, got {skip!r}.")
    if skip:
        if set(raw) - {"match", "skip"}:
            raise SpaceError(f"{where}: a 'skip' rule leaves its layers alone; remove {sorted(set(raw) - {'match', 'skip'})}.")
        return Rule(index, match, skip=True)
    choices = raw.get("precision", [FP32])
    choices = [choices] if isinstance(choices, str) else choices
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{where}: 'precision' must be a choice or a list of them, got {raw.get('precision')!r}.")
    for choice in choices:
        try:
            check_precision(choice)
        except PrecisionError as exc:
            raise SpaceError(f"{where}: {exc}") from None
    return Rule(index, match, precision=tuple(dict.fromkeys(choices)), prune=_parse_prune(where, raw.get("prune")))


def _parse_prune(where: str, raw: Any) -> PruneRange | None:
    if raw is None:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = {"low": raw, "high": raw, "step": 1.0}
    if not isinstance(raw, dict) or not {"low", "high"} <= set(raw) or set(raw) - _PRUNE_KEYS:
        raise SpaceError(f"{where}: 'prune' must be a ratio or {{low, high, step}}, got {raw!r}.")
    low, high, step = raw["low"], raw["high"], raw.get("step", 0.125)
    for key, value in (("low", low), ("high", high), ("step", step)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SpaceError(f"{where}: prune.{key} must be a number, got {value!r}.")
    if not 0.0 <= low <= high <= MAX_PRUNE_RATIO:
        raise SpaceError(f"{where}: `0 <= prune.low <= prune.high <= {MAX_PRUNE_RATIO}` must hold, "
                         f"but got (low={low}, high={high}).")
    if step <= 0:
        raise SpaceError(f"{where}: prune.step must be > 0, got {step}.")
    if low < high and abs(round((high - low) / step) * step - (high - low)) > 1e-5:  # 1/3 written as 0.333333
        raise SpaceError(f"{where}: prune range {high} - {low} is not a multiple of step {step}.")
    return PruneRange(float(low), float(high), float(step) if low < high else 1.0)


def _name_list(path: str, key: str, raw: Any) -> list[str]:
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise SpaceError(f"{path}: fusion.{key} must be a name or a list of names, got {raw!r}.")
    return raw


def _parse_fusion(path: str, raw: Any) -> Fusion:
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: 'fusion' must be a mapping, got {raw!r}.")
    allowed = ["compile_mode", "cuda_graphs", "disable", "opt_level", "tf32", "transformer_fusions"]
    unknown = set(raw) - set(allowed)
    if unknown:
        raise SpaceError(f"{path}: fusion: unknown key(s) {sorted(unknown)}; allowed: {allowed}.")
    if "compile_mode" in raw:
        return _parse_torch_fusion(path, raw)
    levels = _name_list(path, "opt_level", raw.get("opt_level", ["all"]))
    if not levels:
        raise SpaceError(f"{path}: fusion.opt_level must name at least one level.")
    for level in levels:
        if level not in OPT_LEVELS:
            raise SpaceError(f"{path}: fusion.opt_level value {level!r} is not an ORT optimization level; "
                             f"choose from {list(OPT_LEVELS)}.")
    fusions = _name_list(path, "transformer_fusions", raw.get("transformer_fusions", []))
    for name in fusions:
        if name in MERGING_FUSIONS:
            raise SpaceError(f"{path}: fusion.transformer_fusions value {name!r} {MERGING_FUSIONS[name]}, so "
                             f"per-layer precision could not be honoured; choose from {list(TRANSFORMER_FUSIONS)}.")
        if name not in TRANSFORMER_FUSIONS:
            raise SpaceError(f"{path}: fusion.transformer_fusions value {name!r} is not a transformer fusion "
                             f"`tuner` can apply; choose from {list(TRANSFORMER_FUSIONS)}.")
    disable = _name_list(path, "disable", raw.get("disable", []))
    if disable:
        known = session_optimizer_names()
        for name in disable:
            if name not in known:
                close = [k for k in sorted(known) if name.lower()[:4] in k.lower()]
                raise SpaceError(f"{path}: fusion.disable value {name!r} is not a graph transformer of the installed "
                                 f"onnxruntime (which would silently ignore it)"
                                 + (f"; did you mean one of {close}?" if close else f"; known: {sorted(known)}."))
    return Fusion(tuple(sorted(set(levels), key=OPT_LEVELS.index)), tuple(dict.fromkeys(fusions)),
                  tuple(dict.fromkeys(disable)))


def _parse_torch_fusion(path: str, raw: dict) -> Fusion:
    """The fusion section of a space for PyTorch's runtime: compile modes, CUDA graphs and TF32 on/off."""
    ort_keys = sorted(set(raw) & {"opt_level", "transformer_fusions", "disable"})
    if ort_keys:
        raise SpaceError(f"{path}: fusion: {ort_keys} are ONNX Runtime choices, compile_mode a torch one; a space "
                         "is for one runtime.")
    modes = _name_list(path, "compile_mode", raw["compile_mode"])
    if not modes or any(m not in COMPILE_MODES for m in modes):
        raise SpaceError(f"{path}: fusion.compile_mode must name one or more of {list(COMPILE_MODES)}, got "
                         f"{raw['compile_mode']!r}.")
    switches = {}
    for key in ("cuda_graphs", "tf32"):
        values = raw.get(key, [False])
        values = [values] if isinstance(values, bool) else values
        if not isinstance(values, list) or not values or not all(isinstance(v, bool) for v in values):
            raise SpaceError(f"{path}: fusion.{key} must be true, false or a list of them, got {raw.get(key)!r}.")
        switches[key] = tuple(sorted(set(values)))
    return Fusion(compile_modes=tuple(dict.fromkeys(modes)), **switches)
