"""Search spaces: ordered YAML rules on module names -> Optuna distributions -> Candidate.

A space file looks like::

    layers:                       # ordered; the first rule whose `match` fits a layer wins
      - match: fc                 # exact module name ...
        precision: [fp32, int8]
      - match: "re:layer1\\..*"   # ... or a regex after `re:` (full match)
        skip: true                # leave these layers alone: fp32, unpruned
      - match: "re:.*"
        precision: [fp32, int8, int8-dynamic, int4-b32]   # see tuner.precision
        prune: {low: 0.0, high: 0.5, step: 0.125}
    fusion:
      opt_level: [extended, all]  # ORT graph-optimization levels to try
      transformer_fusions: [skip_layer_norm, bias_gelu]   # each one searched on/off, before quantization
      disable: [NchwcTransformer] # ORT session optimizers, each one searched on/off

Layers that no rule matches are left alone too. A precision choice is offered to a layer only where its
ONNX op type can run it (int4 and int8-dynamic: MatMul only); a choice that fits none of a rule's layers
is an error.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.build.fusion import (
    MERGING_FUSIONS,
    TRANSFORMER_FUSIONS,
    session_optimizer_names,
)
from tuner.build.prune import PruningGroup
from tuner.candidate import Candidate
from tuner.errors import SpaceError
from tuner.precision import (
    FP32,
    KINDS,
    PrecisionError,
    applies_to,
    check_precision,
    fidelity_rank,
    op_types_for,
)
from tuner.vocab import IMPORTANCE_METHODS, OPT_LEVELS, RECOVERY_METHODS
from tuner.yamlfile import read_mapping


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
        return {"layers": [rule(r) for r in self.rules], "fusion": fusion, "recovery": list(self.recovery),
                "importance": list(self.importance)}


AUTO = "auto"
AUTO_PRUNE_RATIOS = (0.125, 0.25, 0.375, 0.5)
AUTO_INT4_BLOCK = 32


def auto_space_file(where: str, layer_ops: Mapping[str, str], groups: Sequence[PruningGroup], round_to: int
                    ) -> SpaceFile:
    """The space an experiment gets with ``search_space: auto``: every precision kind each layer's op type can
    run (4-bit with blocks of 32), and pruning by up to half (less where that would leave nothing) for the
    layers the model lets prune. One rule per layer, so ``tuner`` can write it out as a file to start from."""
    prune_of: dict[str, PruneRange] = {}
    for group in groups:
        usable = [r for r in AUTO_PRUNE_RATIOS if group.remaining(r, round_to) >= (group.head_dim or max(round_to, 1))
                  and group.remaining(r, round_to) < group.channels]
        if usable:
            step = AUTO_PRUNE_RATIOS[0]
            prune_of.update({m: PruneRange(0.0, max(usable), step) for m in group.members})
    rules = []
    for index, (layer, op) in enumerate(layer_ops.items()):
        kinds = [k for k in KINDS.values() if op in k.op_types]
        choices = tuple(f"{k.name}-b{AUTO_INT4_BLOCK}" if k.block_sizes else k.name
                        for k in sorted(kinds, key=lambda k: -k.summary_order))
        rules.append(Rule(index, layer, precision=choices, prune=prune_of.get(layer)))
    return SpaceFile(where, tuple(rules), Fusion())


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
    if low < high and abs(round((high - low) / step) * step - (high - low)) > 1e-9:
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
    allowed = ["disable", "opt_level", "transformer_fusions"]
    unknown = set(raw) - set(allowed)
    if unknown:
        raise SpaceError(f"{path}: fusion: unknown key(s) {sorted(unknown)}; allowed: {allowed}.")
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


class SearchSpace:
    """A space file resolved against one model: the Optuna distributions and how to decode them.

    layer_ops: ONNX op type each layer became (Conv, Gemm or MatMul), which decides its precision choices.
    ordered_precision: each layer's precision is an integer, its choices sorted from closest to fp32 to furthest
        (`precision.fidelity_rank`), instead of a category: a sampler that models distances (GP) then sees
        int8-dynamic-pc between fp32 and int8, rather than every choice equally far from every other.
    """

    def __init__(self, space: SpaceFile, layer_ops: Mapping[str, str], groups: Sequence[PruningGroup],
                 round_to: int = 8, left_out: Collection[str] = (), ordered_precision: bool = False):
        self.file = space
        self.ordered_precision = ordered_precision
        self.layer_ops = dict(layer_ops)
        self.layers = list(layer_ops)
        self.rule_of: dict[str, Rule | None] = {name: self._first_match(name) for name in self.layers}
        self._check_rules_used()
        self.precision_choices = self._resolve_precision()
        if ordered_precision:
            self.precision_choices = {n: tuple(sorted(c, key=fidelity_rank)) for n, c in self.precision_choices.items()}
        self.left_out_groups = frozenset(left_out)  # prunable groups whose pruning was found to break the model
        self.prune_choices = self._resolve_groups(groups, round_to)
        self.groups = {g.name: g for g in groups if g.name in self.prune_choices}
        self.round_to = round_to
        self.opt_levels = space.fusion.opt_levels
        self.transformer_fusions = space.fusion.transformer_fusions
        self.disable = space.fusion.disable
        self.recovery = space.recovery if self.prune_choices else ("batchnorm",)
        self.importance = space.importance if self.prune_choices else ("magnitude",)

    def with_file(self, space: SpaceFile) -> SearchSpace:
        """The same model's space under another space file (the measured `auto` one)."""
        return SearchSpace(space, self.layer_ops, list(self.groups.values()), self.round_to, self.left_out_groups,
                           self.ordered_precision)

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

    def _resolve_precision(self) -> dict[str, tuple[str, ...]]:
        """Each layer gets the choices of its rule that its op type can run; a choice fitting none is an error."""
        choices: dict[str, tuple[str, ...]] = {}
        for rule in self.file.rules:
            if rule.skip:
                continue
            members = [n for n, r in self.rule_of.items() if r is rule]
            ops = sorted({self.layer_ops[n] for n in members})
            for choice in rule.precision:
                if not any(applies_to(choice, self.layer_ops[n]) for n in members):
                    raise SpaceError(f"{self.file.path}: {rule.label}: precision {choice!r} runs on "
                                     f"{'/'.join(op_types_for(choice))} nodes only, but its layers became "
                                     f"{'/'.join(ops)} nodes in the exported graph; remove it from this rule.")
            for name in members:
                usable = tuple(c for c in rule.precision if applies_to(c, self.layer_ops[name]))
                if not usable:
                    raise SpaceError(f"{self.file.path}: {rule.label}: layer {name!r} became a "
                                     f"{self.layer_ops[name]} node and none of {list(rule.precision)} applies to it.")
                choices[name] = usable
        return choices

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
                if group.remaining(value, round_to) < (group.head_dim or max(round_to, 1)):
                    rule = rules[group.members[0]]
                    detail = (f"{group.channels // group.head_dim} heads" if group.head_dim else
                              f"{group.channels} channels, rounded to multiples of {round_to}")
                    raise SpaceError(f"{self.file.path}: {rule.label}: prune ratio {value} leaves no {group.unit} in "
                                     f"{group.name} ({detail}).")
            wanted.update(rules[m].index for m in group.members)
            choices[group.name] = tuple(prune_range.values())
        wanted.update(self.rule_of[m].index for g in self.left_out_groups for m in g.split("+")
                      if self.rule_of.get(m) is not None)
        for rule in self.file.rules:
            if rule.prune is not None and rule.index not in wanted:
                raise SpaceError(f"{self.file.path}: {rule.label}: has 'prune' but none of its layers can be "
                                 "pruned (output layers keep their size).")
        return choices

    # --- Optuna side -------------------------------------------------------------------------
    def distributions(self) -> dict[str, BaseDistribution]:
        """Only real choices become parameters; a single allowed value is fixed, not sampled."""
        dists: dict[str, BaseDistribution] = {}
        for name, choices in self.precision_choices.items():
            if len(choices) > 1:
                dists[f"precision.{name}"] = (IntDistribution(0, len(choices) - 1) if self.ordered_precision
                                              else CategoricalDistribution(list(choices)))
        for name, values in self.prune_choices.items():
            if len(values) > 1:
                dists[f"prune.{name}"] = FloatDistribution(values[0], values[-1], step=values[1] - values[0])
        if len(self.opt_levels) > 1:
            dists["opt_level"] = CategoricalDistribution(list(self.opt_levels))
        for name in self.transformer_fusions:
            dists[f"fuse.{name}"] = CategoricalDistribution([False, True])
        for name in self.disable:
            dists[f"disable.{name}"] = CategoricalDistribution([False, True])
        if len(self.recovery) > 1:
            dists["recovery"] = CategoricalDistribution(list(self.recovery))
        if len(self.importance) > 1:
            dists["importance"] = CategoricalDistribution(list(self.importance))
        return dists

    def _precision_value(self, layer: str, choice: str) -> Any:
        """The parameter value of ``choice`` for ``layer`` (its index when precision is ordered)."""
        return self.precision_choices[layer].index(choice) if self.ordered_precision else choice

    def readable(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with ordered precision indices replaced by the choices they stand for (for plots, files)."""
        if not self.ordered_precision:
            return dict(params)
        out = dict(params)
        for key, value in params.items():
            layer = key[len("precision."):]
            if key.startswith("precision.") and layer in self.precision_choices and not isinstance(value, str):
                out[key] = self.precision_choices[layer][int(value)]
        return out

    def decode(self, params: Mapping[str, Any]) -> Candidate:
        params = self.readable(params)
        precision = {n: params.get(f"precision.{n}", choices[0]) for n, choices in self.precision_choices.items()}
        prune = {n: float(params.get(f"prune.{n}", choices[0])) for n, choices in self.prune_choices.items()}
        return Candidate(precision=tuple(precision.items()), prune=tuple(prune.items()),
                         opt_level=params.get("opt_level", self.opt_levels[-1]),
                         fusions=tuple(f for f in self.transformer_fusions if params.get(f"fuse.{f}", False)),
                         disabled_optimizers=tuple(d for d in self.disable if params.get(f"disable.{d}", False)),
                         recovery=params.get("recovery", self.recovery[0]),
                         importance=params.get("importance", self.importance[0]))

    def params_of(self, candidate: Candidate) -> dict[str, Any]:
        """The Optuna parameters that :meth:`decode` turns into ``candidate`` (its choices must be in the space)."""
        precision, prune = dict(candidate.precision), dict(candidate.prune)
        params: dict[str, Any] = {}
        for name in self.distributions():
            kind, _, rest = name.partition(".")
            if kind == "precision":
                params[name] = self._precision_value(rest, precision.get(rest, FP32))
            elif kind == "prune":
                params[name] = prune.get(rest, self.prune_choices[rest][0])
            elif kind == "fuse":
                params[name] = rest in candidate.fusions
            elif kind == "disable":
                params[name] = rest in candidate.disabled_optimizers
            else:
                params[name] = getattr(candidate, name)
        return params

    def uniform_params(self, choice: str) -> dict[str, Any]:
        """Params of the unpruned, unfused candidate with every searched layer at ``choice`` where it is allowed
        (fp32 elsewhere, if allowed), at the highest opt level."""
        params: dict[str, Any] = {}
        for name, dist in self.distributions().items():
            if name.startswith("precision."):
                layer = name[len("precision."):]
                layer_choices = self.precision_choices[layer]
                params[name] = self._precision_value(layer, choice if choice in layer_choices else (
                    FP32 if FP32 in layer_choices else layer_choices[0]))
            elif name.startswith("prune."):
                params[name] = dist.low
            elif name == "opt_level":
                params[name] = self.opt_levels[-1]
            elif name == "recovery":
                params[name] = self.recovery[0]
            elif name == "importance":
                params[name] = self.importance[0]
            else:
                params[name] = False
        return params

    @property
    def prunes(self) -> bool:
        """Whether any pruning ratio is searched (a group with one allowed ratio is fixed, not searched)."""
        return any(len(values) > 1 for values in self.prune_choices.values())

    def offered_precisions(self) -> set[str]:
        """Every precision choice some layer may take."""
        return {c for choices in self.precision_choices.values() for c in choices}

    def references(self) -> list[tuple[str, dict[str, Any]]]:
        """fp32 and one uniform candidate per precision choice in the space: the baselines a front must beat."""
        offered = dict.fromkeys(c for choices in self.precision_choices.values() for c in choices)
        labels = [FP32] + [c for c in offered if c != FP32]
        return [(label if label == FP32 else f"uniform {label}", self.uniform_params(label)) for label in labels]


def quantizable_layers(model) -> list[str]:
    """Module names of the layers `tuner` searches, in model order: Conv2d and Linear, and single-layer
    unidirectional LSTMs (one ONNX LSTM node each; precision only)."""
    return [name for name, m in model.named_modules() if _searchable(m)]


def _searchable(module) -> bool:
    from torch import nn

    from tuner.build.prune import PRUNABLE_TYPES

    return isinstance(module, PRUNABLE_TYPES) or (isinstance(module, nn.LSTM) and module.num_layers == 1
                                                   and not module.bidirectional)


def untuned_layers(model) -> list[tuple[str, str]]:
    """Layers with weights that `tuner` does not search (GRU, Conv1d, stacked LSTMs, ...; norms and embeddings aside),
    with their type: they stay fp32, and a user should be told so."""
    from torch import nn

    from tuner.build.prune import PRUNABLE_TYPES

    plain = PRUNABLE_TYPES + (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
                              nn.EmbeddingBag)
    return [(name, type(m).__name__) for name, m in model.named_modules()
            if not isinstance(m, plain) and not _searchable(m) and not any(True for _ in m.children())
            and any(True for _ in m.parameters(recurse=False))]


def layer_op_types(model, example_inputs, exporter: str = "dynamo") -> dict[str, str]:
    """Export ``model`` once and return the ONNX op type each quantizable layer became.

    Layers the exporter dropped (their output is never used) are left out: there is nothing to tune.
    """
    import tempfile

    import onnx

    from tuner.build.export import export_onnx, layer_weights, map_layers

    layers = quantizable_layers(model)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, example_inputs, f"{tmp}/model.onnx", exporter)
        nodes = map_layers(onnx.load(f"{tmp}/model.onnx"), layer_weights(model, layers), allow_missing=True)
    return {layer: nodes[layer].op_type for layer in layers if layer in nodes}
