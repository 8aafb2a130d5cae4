"""Structured pruning with torch-pruning's dependency graph, then BatchNorm recalibration.

Layers that pruning couples (a residual add forces every layer feeding it to keep the same channels)
form one group and share one ratio. A group is named after its member layers, joined with ``+``.
In a transformer encoder the query/key/value projections of one attention block form a group whose unit
is a whole head (its ratio removes heads, each keeping the head dimension); an FFN's up-projection forms a
group of hidden units. In a decoder with grouped-query attention, the unit is a key/value group: a key/value
head with the query heads that read it (`tuner.build.kv_groups`).
"""

from __future__ import annotations

import copy
import gc
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from tuner.build.kv_groups import (
    grouped_query_attentions,
    prune_kv_group,
    units_dropped,
)
from tuner.core.errors import where
from tuner.task import model_inputs

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
# Channel importance criteria that need no gradients (torch-pruning's implementations).
IMPORTANCE = {
    "magnitude": lambda: tp.importance.MagnitudeImportance(p=2),   # L2 norm of each channel's weights
    "lamp": lambda: tp.importance.LAMPImportance(p=2),             # layer-adaptive magnitude (LAMP)
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),             # distance to the geometric median
    "bn_scale": lambda: tp.importance.BNScaleImportance(),         # |gamma| of the following BatchNorm
}


@dataclass(frozen=True)
class PruningGroup:
    name: str
    members: tuple[str, ...]  # layers whose output channels shrink together
    channels: int  # output channels before pruning
    head_dim: int = 0  # > 0: an attention block's q/k/v, pruned in whole heads of this many channels
    consumers: tuple[str, ...] = ()  # layers whose input channels shrink with them (the latency model scales them)
    # grouped-query attention: ``channels`` are the key/value projection's, pruned in whole key/value heads of
    # ``head_dim``, each with the query heads that read it (the query projection shrinks by the same share)
    kv_groups: bool = False

    @property
    def unit(self) -> str:
        return "key/value groups" if self.kv_groups else "heads" if self.head_dim else "channels"

    @property
    def label(self) -> str:
        """The members in a few words: ``encoder.layer.{0..11}.attention.{q,k,v}`` for 36 layers."""
        return compact_names(self.members)

    def remaining(self, ratio: float, round_to: int) -> int:
        """Output channels left after pruning ``ratio`` (of heads, for attention groups)."""
        if self.head_dim:
            heads = self.channels // self.head_dim
            return (heads - units_dropped(heads, ratio)) * self.head_dim
        return remaining_channels(self.channels, ratio, round_to)


def compact_names(names: Sequence[str]) -> str:
    """Dotted names that differ in a few places, written once with the differing parts in braces
    (``a.{0..3}.b``, ``a.{q,k,v}``); names that no such pattern covers exactly are listed."""
    names = list(dict.fromkeys(names))
    split = [name.split(".") for name in names]
    depths = list(dict.fromkeys(len(parts) for parts in split))
    if len(depths) > 1:  # names of different depths: each depth on its own (`a.{0..29}.norm, a.norm`)
        return ", ".join(compact_names([n for n, parts in zip(names, split) if len(parts) == d]) for d in depths)
    if len(names) < 3:
        return ", ".join(names)
    columns = [list(dict.fromkeys(column)) for column in zip(*split)]
    if math.prod(len(column) for column in columns) != len(names):  # not a full grid: braces would claim more
        return ", ".join(names)
    return ".".join(_braced(column) for column in columns)


def _braced(values: list[str]) -> str:
    if len(values) == 1:
        return values[0]
    if all(v.isdigit() for v in values):
        numbers = sorted(int(v) for v in values)
        if numbers == list(range(numbers[0], numbers[-1] + 1)):
            return f"{{{numbers[0]}..{numbers[-1]}}}"
    return "{" + ",".join(values) + "}"


# Attention projections and head-count attributes as Hugging Face families name them (BERT/RoBERTa/ELECTRA,
# DistilBERT, MPNet, BART/ViT-style).
QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q", "k", "v"), ("q_proj", "k_proj", "v_proj"))
HEAD_COUNT_NAMES = ("num_attention_heads", "n_heads", "num_heads")


@dataclass(frozen=True)
class AttentionBlock:
    """A self-attention module: its query/key/value Linear layers and the attribute holding its head count."""

    module: nn.Module
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    heads_attr: str

    @property
    def heads(self) -> int:
        return getattr(self.module, self.heads_attr)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.module, "attention_head_size", 0) or self.qkv[0].out_features // self.heads)


def attention_blocks(model: nn.Module) -> dict[str, AttentionBlock]:
    """Modules with query/key/value Linear layers and a head count (see QKV_NAMES, HEAD_COUNT_NAMES)."""
    blocks = {}
    for name, module in model.named_modules():
        heads_attr = next((a for a in HEAD_COUNT_NAMES if isinstance(getattr(module, a, None), int)), None)
        qkv = next((tuple(getattr(module, p) for p in names) for names in QKV_NAMES
                    if all(isinstance(getattr(module, p, None), nn.Linear) for p in names)), None)
        if heads_attr and qkv:
            blocks[name] = AttentionBlock(module, qkv, heads_attr)
    return blocks


def _dependency_graph(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tp.DependencyGraph:
    with warnings.catch_warnings():  # "unwrapped parameters" of recurrent layers: their pruning is checked by running
        warnings.simplefilter("ignore", UserWarning)
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)


def pruning_groups(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], output_layers: Sequence[str],
    graph: tp.DependencyGraph | None = None,
) -> list[PruningGroup]:
    """The coupled groups of Conv2d/Linear layers whose output channels can be pruned (``graph``: the model's
    dependency graph, if the caller has built it)."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    graph = graph or _dependency_graph(model, example_inputs)
    ignored = [modules[n] for n in output_layers]
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE_TYPES)):
        members = sorted(
            {names[dep.target.module] for dep, _ in group
             if isinstance(dep.target.module, PRUNABLE_TYPES) and graph.is_out_channel_pruning_fn(dep.handler)},
            key=list(modules).index,
        )
        consumers = sorted(
            {names[dep.target.module] for dep, _ in group
             if isinstance(dep.target.module, PRUNABLE_TYPES) and graph.is_in_channel_pruning_fn(dep.handler)},
            key=list(modules).index,
        )
        if members:
            root = modules[members[0]]
            channels = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
            head_dim = next((block.head_dim for block in attention_blocks(model).values() if root is block.qkv[0]), 0)
            groups.append(PruningGroup("+".join(members), tuple(members), channels, head_dim, tuple(consumers)))
    claimed = {m for g in groups for m in g.members}
    return groups + [g for g in kv_pruning_groups(model) if not claimed & set(g.members)]


def kv_pruning_groups(model: nn.Module) -> list[PruningGroup]:
    """One group per grouped-query attention with two key/value heads or more: its query, key and value
    projections, pruned in whole key/value groups; the output projection's input shrinks with them."""
    groups = []
    for name, attention in grouped_query_attentions(model).items():
        if attention.kv_heads >= 2:
            members = tuple(f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj"))
            groups.append(PruningGroup("+".join(members), members, attention.module.k_proj.out_features,
                                       attention.head_dim, (f"{name}.o_proj",), kv_groups=True))
    return groups


def remaining_channels(channels: int, ratio: float, round_to: int) -> int:
    """Channels a layer keeps after pruning ``ratio``, as torch-pruning computes it with ``round_to``."""
    if ratio <= 0:
        return channels
    keep = int(channels * (1 - ratio))
    return max(keep - keep % round_to, 0) if round_to else keep


def prune(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    ratios: Mapping[str, float],
    output_layers: Sequence[str],
    round_to: int = 8,
    importance: str = "magnitude",
) -> nn.Module:
    """A pruned copy of ``model``: each group named in ``ratios`` loses that fraction of its channels.

    Channels are ranked by ``importance`` (see IMPORTANCE); kept channel counts are multiples of ``round_to``.
    Attention heads are ranked by the L2 norm of their query/key/value weights.
    """
    if importance not in IMPORTANCE:
        raise ValueError(f"importance must be one of {sorted(IMPORTANCE)}, but got {importance!r}.")
    model = copy.deepcopy(model).eval()
    ratios = {name: r for name, r in ratios.items() if r > 0}
    if not ratios:
        return model
    modules = dict(model.named_modules())
    groups = {g.name: g for g in kv_pruning_groups(model)}  # need no dependency graph (`tuner.build.kv_groups`)
    graph = None
    if set(ratios) - set(groups):
        # One dependency graph serves every group: torch-pruning keeps it valid as it prunes (tracing BERT-base
        # takes seconds, and pruned heads used to trace it again for each attention block).
        graph = _dependency_graph(model, example_inputs)
        groups = {g.name: g for g in pruning_groups(model, example_inputs, output_layers, graph)}
    unknown = sorted(set(ratios) - set(groups))
    if unknown:
        raise ValueError(f"unknown pruning groups {unknown}; the model has {sorted(groups)}.")
    for name, ratio in ratios.items():
        group = groups[name]
        if group.remaining(ratio, round_to) < (group.head_dim or max(round_to, 1)):
            raise ValueError(f"pruning group {name!r} by {ratio} leaves no {group.unit} (round_to={round_to}).")
    channel_ratios = {n: r for n, r in ratios.items() if not groups[n].head_dim}
    if channel_ratios:
        # A tuple key makes torch-pruning apply one ratio to every layer of the coupled group.
        ratio_dict = {tuple(modules[m] for m in groups[name].members): r for name, r in channel_ratios.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pruner = tp.pruner.MetaPruner(
                model,
                example_inputs,
                importance=IMPORTANCE[importance](),
                pruning_ratio=0.0,
                pruning_ratio_dict=ratio_dict,
                ignored_layers=[modules[n] for n in output_layers],
                round_to=round_to or None,
            )
            pruner.step()
        graph = pruner.DG  # (MetaPruner traces its own; it is the one that knows the channels it removed)
    attentions = grouped_query_attentions(model)
    for name, ratio in ratios.items():
        group = groups[name]
        if group.kv_groups:
            prune_kv_group(attentions[group.members[0].rsplit(".", 1)[0]], ratio, name)
        elif group.head_dim:
            _prune_heads(model, graph, group, ratio)
    return model.eval()


def _prune_heads(model: nn.Module, graph: tp.DependencyGraph, group: PruningGroup, ratio: float) -> None:
    """Remove the lowest-magnitude whole heads of one attention block through torch-pruning's dependency graph
    (which shrinks query, key, value and the attention output's input alike), then fix the block's head count."""
    modules = dict(model.named_modules())
    block = next(b for b in attention_blocks(model).values() if b.qkv[0] is modules[group.members[0]])
    head_dim, heads = group.head_dim, block.heads
    drop = heads - group.remaining(ratio, 0) // head_dim
    if drop <= 0:
        return
    score = sum(w.weight.detach().reshape(heads, head_dim, -1).pow(2).sum(dim=(1, 2)) for w in block.qkv)
    dropped = sorted(torch.argsort(score)[:drop].tolist())
    idxs = [h * head_dim + i for h in dropped for i in range(head_dim)]
    graph.get_pruning_group(block.qkv[0], tp.prune_linear_out_channels, idxs=idxs).prune()
    setattr(block.module, block.heads_attr, heads - drop)
    if hasattr(block.module, "all_head_size"):
        block.module.all_head_size = (heads - drop) * head_dim


def pruning_role(group: str) -> str:
    """A group's name with each member's block number replaced (``layers.{}.mlp.up_proj``): the groups of one role
    in every block run the same code, so they break alike."""
    return "+".join(_BLOCK_NUMBER.sub("{}", member, count=1) for member in group.split("+"))


_BLOCK_NUMBER = re.compile(r"(?<=\.)\d+(?=\.|$)")


def broken_groups(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], ratios: Mapping[str, float],
                  output_layers: Sequence[str], round_to: int = 8) -> dict[str, str]:
    """The groups whose pruning at their ratio breaks the model (a reshape to a hard-coded width, say), each with
    the layer that raised and why.

    torch-pruning follows the traced graph; code that bakes a channel count into a constant is invisible to
    it, and the model only fails when run. Checked in a few pruned copies, not one per group (each copy traces
    the whole model: minutes per group on a 30-block LLM): every group at once; where that breaks, each role (the
    same layers in every block) at once; where a role breaks, its first group alone: if that breaks too, the whole
    role is left out with its reason, otherwise its groups are checked one by one.
    """
    if not ratios or _runs_pruned(model, example_inputs, ratios, output_layers, round_to):
        return {}  # the usual case: every group at once works, so one pruned copy answers for all of them
    roles: dict[str, list[str]] = {}
    for name in ratios:
        roles.setdefault(pruning_role(name), []).append(name)
    broken = {}
    for names in roles.values():
        if len(roles) > 1 and len(names) > 1 and _runs_pruned(
                model, example_inputs, {n: ratios[n] for n in names}, output_layers, round_to):
            continue
        first = _breaks(model, example_inputs, names[0], ratios[names[0]], output_layers, round_to)
        if first is not None:
            broken.update(dict.fromkeys(names, first))
            continue
        for name in names[1:]:
            why = _breaks(model, example_inputs, name, ratios[name], output_layers, round_to)
            if why is not None:
                broken[name] = why
    return broken


def _breaks(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], name: str, ratio: float,
            output_layers: Sequence[str], round_to: int) -> str | None:
    """Why pruning group ``name`` alone by ``ratio`` breaks the model, or None where it runs."""
    try:
        pruned = prune(model, example_inputs, {name: ratio}, output_layers, round_to)
    except Exception as exc:
        return f"pruning it raised {type(exc).__name__}: {exc}"
    layer, exc = _run_and_catch(pruned, model_inputs(pruned, example_inputs))
    # torch-pruning's dependency graph holds the pruned copy in reference cycles: free each copy now, or
    # a model's worth of memory piles up per group (6.2 GB peak for ResNet-50's 37 groups)
    del pruned
    gc.collect()
    if exc is None:
        return None
    at = f"layer {layer!r}" if layer else f"{type(model).__name__}.forward"
    return f"{at} then raised{where(exc)}: {type(exc).__name__}: {exc}"


def broken_warnings(broken: Mapping[str, str], ratios: Mapping[str, float]) -> list[str]:
    """One line per role left out (and per reason): its groups' layers in a few words, how much, and why."""
    by_role: dict[tuple[str, str, float], list[str]] = {}
    for name, why in broken.items():
        by_role.setdefault((pruning_role(name), why, ratios[name]), []).append(name)
    lines = []
    for (_, why, ratio), names in by_role.items():
        members = compact_names([m for name in names for m in name.split("+")])
        what = f"{len(names)} pruning groups" if len(names) > 1 else "pruning group"
        lines.append(f"warning: {what} {members} {'are' if len(names) > 1 else 'is'} left out of the search: pruned by {ratio:g}, {why}")
    return lines


def _runs_pruned(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], ratios: Mapping[str, float],
                 output_layers: Sequence[str], round_to: int) -> bool:
    """Whether ``model`` still runs with every group in ``ratios`` pruned at once."""
    try:
        pruned = prune(model, example_inputs, ratios, output_layers, round_to)
        ok = _run_and_catch(pruned, model_inputs(pruned, example_inputs))[1] is None
    except Exception:
        ok = False
    pruned = None
    gc.collect()
    return ok


@torch.no_grad()
def _run_and_catch(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tuple[str, Exception | None]:
    """Run ``model``; on an exception, the innermost module that was running (by forward hooks) and the error."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []

    def enter(module: nn.Module, _inputs) -> None:
        stack.append(names[module])

    def leave(module: nn.Module, _inputs, _output) -> None:
        stack.pop()

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        model.eval()(*example_inputs)
        return "", None
    except Exception as exc:
        return (stack[-1] if stack else ""), exc
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]]) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``batches`` (a cumulative average over all of them)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for batch in batches:
        model(*batch)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()
