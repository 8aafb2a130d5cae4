"""A space file resolved against one model: the Optuna distributions and how to decode them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.build.prune import PruningGroup
from tuner.core.candidate import Candidate
from tuner.core.errors import SpaceError
from tuner.core.precision import FP32, applies_to, fidelity_rank, op_types_for
from tuner.core.records import reference_label
from tuner.space.file import Rule, SpaceFile

# The switch that decides whether a candidate prunes at all: its pruning ratios count only when it is on. Each
# group's ratio alone would leave every group at 0 in a vanishing share of trials (for 12 groups with 6 ratios,
# one in 2 billion); with the switch, samplers that draw it independently (random, TPE) try unpruned mixes in about
# half of their trials, and a model that tolerates no pruning is not searched only through pruned ones.
PRUNED = "pruned"


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
        self.compile_modes, self.cuda_graphs, self.tf32 = (space.fusion.compile_modes, space.fusion.cuda_graphs,
                                                           space.fusion.tf32)  # torch runtime only
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
        if self.prunes:
            dists[PRUNED] = CategoricalDistribution([False, True])
        for name, values in self.prune_choices.items():
            if len(values) > 1:
                dists[f"prune.{name}"] = FloatDistribution(values[0], values[-1], step=values[1] - values[0])
        if len(self.opt_levels) > 1:
            dists["opt_level"] = CategoricalDistribution(list(self.opt_levels))
        for name in self.transformer_fusions:
            dists[f"fuse.{name}"] = CategoricalDistribution([False, True])
        for name in self.disable:
            dists[f"disable.{name}"] = CategoricalDistribution([False, True])
        for name, values in (("compile_mode", self.compile_modes), ("cuda_graphs", self.cuda_graphs),
                             ("tf32", self.tf32)):
            if len(values) > 1:
                dists[name] = CategoricalDistribution(list(values))
        if len(self.recovery) > 1:
            dists["recovery"] = CategoricalDistribution(list(self.recovery))
        if len(self.importance) > 1:
            dists["importance"] = CategoricalDistribution(list(self.importance))
        return dists

    def _precision_value(self, layer: str, choice: str) -> Any:
        """The parameter value of ``choice`` for ``layer`` (its index when precision is ordered)."""
        return self.precision_choices[layer].index(choice) if self.ordered_precision else choice

    def readable(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` as the choices they stand for (for plots, files): ordered precision indices replaced by their
        choices, and with the pruning switch off, each group's ratio by its lowest (the ratio drawn is unused)."""
        out = dict(params)
        if out.get(PRUNED) is False:
            out.update({f"prune.{n}": values[0] for n, values in self.prune_choices.items()
                        if f"prune.{n}" in out})
        if not self.ordered_precision:
            return out
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
                         importance=params.get("importance", self.importance[0]),
                         **self.runtime_choices(params))

    def runtime_choices(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A torch-runtime candidate's compile mode and switches from ``params``; those not in them (all, without
        ``params``) as the references take them: the last compile mode, CUDA graphs on where offered, TF32 off."""
        params = params or {}
        if not self.compile_modes:
            return {}
        return {"compile_mode": params.get("compile_mode", self.compile_modes[-1]),
                "cuda_graphs": bool(params.get("cuda_graphs", self.cuda_graphs[-1])),
                "tf32": bool(params.get("tf32", self.tf32[0]))}

    def params_of(self, candidate: Candidate) -> dict[str, Any]:
        """The Optuna parameters that :meth:`decode` turns into ``candidate`` (its choices must be in the space)."""
        precision, prune = dict(candidate.precision), dict(candidate.prune)
        params: dict[str, Any] = {}
        for name, dist in self.distributions().items():
            kind, _, rest = name.partition(".")
            if name == PRUNED:
                params[name] = any(ratio != self.prune_choices[group][0] for group, ratio in prune.items()
                                   if group in self.prune_choices)
            elif kind == "precision":
                params[name] = self._precision_value(rest, precision.get(rest, FP32))
            elif kind == "prune":
                params[name] = prune.get(rest, self.prune_choices[rest][0])
            elif kind == "fuse":
                params[name] = rest in candidate.fusions
            elif kind == "disable":
                params[name] = rest in candidate.disabled_optimizers
            else:  # recovery, importance: an unpruned candidate has recovery "none", which is no choice
                value = getattr(candidate, name)
                params[name] = value if value in dist.choices else dist.choices[0]
        return params

    def uniform_params(self, choice: str) -> dict[str, Any]:
        """Params of the unpruned, unfused candidate with every searched layer at ``choice`` where it is allowed
        (fp32 elsewhere, if allowed), at the highest opt level (on torch: the last compile mode listed, CUDA graphs
        on where offered, TF32 off)."""
        params: dict[str, Any] = {}
        for name, dist in self.distributions().items():
            if name.startswith("precision."):
                layer = name[len("precision."):]
                layer_choices = self.precision_choices[layer]
                params[name] = self._precision_value(layer, choice if choice in layer_choices else (
                    FP32 if FP32 in layer_choices else layer_choices[0]))
            elif name.startswith("prune."):
                params[name] = dist.low
            elif name == PRUNED:
                params[name] = False
            elif name == "opt_level":
                params[name] = self.opt_levels[-1]
            elif name in ("compile_mode", "cuda_graphs"):  # the references: the last (fastest) one listed
                params[name] = dist.choices[-1]
            elif name == "recovery":
                params[name] = self.recovery[0]
            elif name == "importance":
                params[name] = self.importance[0]
            else:
                params[name] = False
        return params

    def baseline(self) -> Candidate:
        """The fp32 model every speedup is over: every layer fp32, unpruned, unfused; on PyTorch's runtime, the
        model as trained, run eagerly."""
        return Candidate(opt_level="all", compile_mode="none" if self.compile_modes else None)

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
        return [(reference_label(label), self.uniform_params(label)) for label in labels]
