"""Search spaces: ordered YAML rules on module names -> Optuna distributions -> Candidate.

A space file looks like::

    layers:                       # ordered; the first rule whose `match` fits a layer wins
      - match: fc                 # exact module name ...
        bits: [8, 32]
      - match: "re:layer1\\..*"   # ... or a regex after `re:` (full match)
        skip: true                # leave these layers alone: fp32, unpruned
      - match: "re:.*"
        bits: [8, 32]             # 8 = static int8 QDQ, 32 = fp32
        prune: {low: 0.0, high: 0.5, step: 0.125}
    fusion:
      opt_level: [extended, all]  # ORT graph-optimization levels to try

Layers that no rule matches are left alone too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.build.prune import PruningGroup, remaining_channels
from tuner.candidate import BITS, OPT_LEVELS, Candidate
from tuner.yamlfile import read_mapping


class SpaceError(ValueError):
    """A search-space file that cannot be searched; the message names file, rule and value."""


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
    bits: tuple[int, ...] = (32,)
    prune: PruneRange | None = None

    @property
    def label(self) -> str:
        return f"layers[{self.index}] (match {self.match!r})"

    def matches(self, name: str) -> bool:
        if self.match.startswith("re:"):
            return re.fullmatch(self.match[3:], name) is not None
        return self.match == name


@dataclass(frozen=True)
class SpaceFile:
    path: str
    rules: tuple[Rule, ...]
    opt_levels: tuple[str, ...]


_RULE_KEYS = {"match", "skip", "bits", "prune"}
_PRUNE_KEYS = {"low", "high", "step"}
MAX_PRUNE_RATIO = 0.9


def load_space_file(path: str | Path) -> SpaceFile:
    """Parse and validate a space file (everything that can be checked without the model)."""
    path = str(path)
    data = read_mapping(path, "search-space", SpaceError)
    unknown = set(data) - {"layers", "fusion"}
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: ['fusion', 'layers'].")
    raw_rules = data.get("layers") or []
    if not isinstance(raw_rules, list):
        raise SpaceError(f"{path}: 'layers' must be a list of rules, got {type(raw_rules).__name__}.")
    rules = tuple(_parse_rule(path, i, raw) for i, raw in enumerate(raw_rules))
    return SpaceFile(path, rules, _parse_fusion(path, data.get("fusion") or {}))


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
    bits = raw.get("bits", [32])
    bits = [bits] if isinstance(bits, int) and not isinstance(bits, bool) else bits
    if not isinstance(bits, list) or not bits:
        raise SpaceError(f"{where}: 'bits' must be a bit-width or a list of them, got {raw.get('bits')!r}.")
    for b in bits:
        if b not in BITS or isinstance(b, bool):
            raise SpaceError(f"{where}: bits value {b!r} cannot be built; choose from {list(BITS)} "
                             "(8 = static int8, 32 = fp32).")
    return Rule(index, match, bits=tuple(sorted(set(bits))), prune=_parse_prune(where, raw.get("prune")))


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
    if low < high and abs(round((high - low) / step) * step - (high - low)) > 1e-9:
        raise SpaceError(f"{where}: prune range {high} - {low} is not a multiple of step {step}.")
    return PruneRange(float(low), float(high), float(step) if low < high else 1.0)


def _parse_fusion(path: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: 'fusion' must be a mapping, got {raw!r}.")
    unknown = set(raw) - {"opt_level"}
    if unknown:
        raise SpaceError(f"{path}: fusion: unknown key(s) {sorted(unknown)}; allowed: ['opt_level'].")
    levels = raw.get("opt_level", ["all"])
    levels = [levels] if isinstance(levels, str) else levels
    if not isinstance(levels, list) or not levels:
        raise SpaceError(f"{path}: fusion.opt_level must be a level or a list of levels, got {levels!r}.")
    for level in levels:
        if level not in OPT_LEVELS:
            raise SpaceError(f"{path}: fusion.opt_level value {level!r} is not an ORT optimization level; "
                             f"choose from {list(OPT_LEVELS)}.")
    return tuple(sorted(set(levels), key=OPT_LEVELS.index))


class SearchSpace:
    """A space file resolved against one model: the Optuna distributions and how to decode them."""

    def __init__(self, space: SpaceFile, layers: Sequence[str], groups: Sequence[PruningGroup], round_to: int = 8):
        self.file = space
        self.layers = list(layers)
        self.rule_of: dict[str, Rule | None] = {name: self._first_match(name) for name in self.layers}
        self._check_rules_used()
        self.bits_choices = {
            name: rule.bits for name, rule in self.rule_of.items() if rule is not None and not rule.skip
        }
        self.prune_choices = self._resolve_groups(groups, round_to)
        self.opt_levels = space.opt_levels

    def _first_match(self, name: str) -> Rule | None:
        return next((rule for rule in self.file.rules if rule.matches(name)), None)

    def _check_rules_used(self) -> None:
        won = {rule.index for rule in self.rule_of.values() if rule is not None}
        for rule in self.file.rules:
            if rule.index in won:
                continue
            if any(rule.matches(name) for name in self.layers):
                raise SpaceError(f"{self.file.path}: {rule.label}: every layer it matches is taken by an earlier "
                                 "rule (first match wins); remove it or move it up.")
            raise SpaceError(f"{self.file.path}: {rule.label}: matches no layer. The model's layers are: "
                             f"{', '.join(self.layers)}.")

    def _resolve_groups(self, groups: Sequence[PruningGroup], round_to: int) -> dict[str, tuple[float, ...]]:
        choices: dict[str, tuple[float, ...]] = {}
        wanted: set[int] = set()
        for group in groups:
            rules = {m: self.rule_of.get(m) for m in group.members}
            ranges = {m: (r.prune if r is not None else None) for m, r in rules.items()}
            if all(v is None for v in ranges.values()):
                continue
            if len(set(ranges.values())) > 1:
                detail = "; ".join(f"{m}: {rules[m].label if rules[m] else 'no rule'} -> prune {ranges[m] or 'none'}"
                                   for m in group.members)
                raise SpaceError(f"{self.file.path}: layers {', '.join(group.members)} are coupled by pruning "
                                 f"(they must keep the same channel count), but their rules disagree ({detail}). "
                                 "Give them the same prune range, or none.")
            prune_range = next(iter(ranges.values()))
            for value in prune_range.values():
                if remaining_channels(group.channels, value, round_to) < max(round_to, 1):
                    rule = rules[group.members[0]]
                    raise SpaceError(f"{self.file.path}: {rule.label}: prune ratio {value} leaves no channels in "
                                     f"{group.name} ({group.channels} channels, rounded to multiples of {round_to}).")
            wanted.update(rules[m].index for m in group.members)
            choices[group.name] = tuple(prune_range.values())
        for rule in self.file.rules:
            if rule.prune is not None and rule.index not in wanted:
                raise SpaceError(f"{self.file.path}: {rule.label}: has 'prune' but none of its layers can be "
                                 "pruned (output layers keep their size).")
        return choices

    # --- Optuna side -------------------------------------------------------------------------
    def distributions(self) -> dict[str, BaseDistribution]:
        """Only real choices become parameters; a single allowed value is fixed, not sampled."""
        dists: dict[str, BaseDistribution] = {}
        for name, bits in self.bits_choices.items():
            if len(bits) > 1:  # {8, 32}: an ordered integer with one step keeps the order for the sampler
                dists[f"bits.{name}"] = IntDistribution(bits[0], bits[-1], step=bits[1] - bits[0])
        for name, values in self.prune_choices.items():
            if len(values) > 1:
                dists[f"prune.{name}"] = FloatDistribution(values[0], values[-1], step=values[1] - values[0])
        if len(self.opt_levels) > 1:
            dists["opt_level"] = CategoricalDistribution(list(self.opt_levels))
        return dists

    def decode(self, params: Mapping[str, Any]) -> Candidate:
        bits = {n: int(params.get(f"bits.{n}", choices[0])) for n, choices in self.bits_choices.items()}
        prune = {n: float(params.get(f"prune.{n}", choices[0])) for n, choices in self.prune_choices.items()}
        return Candidate(bits=tuple(bits.items()), prune=tuple(prune.items()),
                         opt_level=params.get("opt_level", self.opt_levels[-1]))

    def uniform_params(self, bits: int) -> dict[str, Any]:
        """Params of the unpruned candidate with every searched layer at ``bits`` where allowed, best opt level."""
        params: dict[str, Any] = {}
        for name, dist in self.distributions().items():
            if name.startswith("bits."):
                params[name] = bits if bits in self.bits_choices[name[5:]] else dist.low
            elif name.startswith("prune."):
                params[name] = dist.low
            else:
                params[name] = self.opt_levels[-1]
        return params


def quantizable_layers(model) -> list[str]:
    """Module names of the layers `tuner` searches: Conv2d and Linear, in model order."""
    from tuner.build.prune import PRUNABLE_TYPES

    return [name for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
