"""Grouped-query attention pruned in whole key/value groups: a key/value head with the query heads that read it.

Channel pruning through torch-pruning's dependency graph cannot keep grouped-query heads aligned (a key/value
projection cut to a width that is not a multiple of the head size breaks the attention's reshape), and tracing a
grouped-query decoder with its graph does not finish (torch-pruning 1.6, transformers 5). Here the groups are cut by
index with torch-pruning's own layer functions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn


@dataclass(frozen=True)
class GroupedQueryAttention:
    """A grouped-query attention module (Llama, Mistral, Qwen2, SmolLM): ``q_proj``/``k_proj``/``v_proj``/``o_proj``,
    ``head_dim``, and ``num_key_value_groups`` query heads sharing each key/value head."""

    module: nn.Module

    @property
    def head_dim(self) -> int:
        return int(self.module.head_dim)

    @property
    def kv_heads(self) -> int:
        return self.module.k_proj.out_features // self.head_dim

    @property
    def queries_per_kv(self) -> int:
        return int(self.module.num_key_value_groups)


def grouped_query_attentions(model: nn.Module) -> dict[str, GroupedQueryAttention]:
    """The grouped-query attention modules of ``model`` by name (see :class:`GroupedQueryAttention`)."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return {name: GroupedQueryAttention(m) for name, m in model.named_modules()
            if all(isinstance(getattr(m, p, None), nn.Linear) for p in names)
            and isinstance(getattr(m, "num_key_value_groups", None), int) and isinstance(getattr(m, "head_dim", None), int)}


def prune_kv_groups(model: nn.Module, ratios: Mapping[str, float]) -> nn.Module:
    """A copy of ``model`` in which each grouped-query attention named in ``ratios`` loses that fraction of its
    key/value groups (:func:`prune_kv_group`). The pruned model's KV cache has fewer heads in those layers
    (``CachedDecoder.empty_cache`` and ``fit_inputs`` follow the model)."""
    model = copy.deepcopy(model).eval()
    attentions = grouped_query_attentions(model)
    unknown = sorted(set(ratios) - set(attentions))
    if unknown:
        raise ValueError(f"not grouped-query attention modules: {unknown}; the model has {sorted(attentions)}.")
    for name, ratio in ratios.items():
        prune_kv_group(attentions[name], ratio, name)
    return model


def units_dropped(units: int, ratio: float) -> int:
    """Whole units (attention heads, key/value groups) that pruning ``ratio`` of ``units`` removes: rounded down,
    where a ratio written to 6 decimals (1/3 as 0.333333) counts as the fraction it stands for."""
    return int(units * ratio + 1e-4)


def prune_kv_group(attention: GroupedQueryAttention, ratio: float, name: str = "attention") -> None:
    """Remove ``ratio`` of one attention's key/value groups in place: a key/value head with the query heads that
    read it, so every width stays a multiple of the head size and each remaining query head keeps its own key/value
    head. Groups are ranked by the L2 norm of their query, key and value weights; the output projection loses the
    matching input channels.

    torch-pruning's own layer functions cut the channels; its dependency graph is not used here, since tracing a
    grouped-query decoder through it does not finish (torch-pruning 1.6, transformers 5).
    """
    kv_heads, per_kv, head_dim = attention.kv_heads, attention.queries_per_kv, attention.head_dim
    drop = units_dropped(kv_heads, ratio)
    if drop <= 0:
        return
    if drop >= kv_heads:
        raise ValueError(f"pruning {name!r} by {ratio} leaves none of its {kv_heads} key/value heads.")
    m = attention.module

    def norms(layer: nn.Linear, heads: int) -> torch.Tensor:
        return layer.weight.detach().reshape(heads, -1).pow(2).sum(dim=1)

    score = (norms(m.k_proj, kv_heads) + norms(m.v_proj, kv_heads)
             + norms(m.q_proj, kv_heads))  # q rows of one group are contiguous: reshape(kv_heads, -1)
    dropped = sorted(torch.argsort(score)[:drop].tolist())
    kv_idxs = [h * head_dim + i for h in dropped for i in range(head_dim)]
    q_idxs = [(h * per_kv + j) * head_dim + i for h in dropped for j in range(per_kv) for i in range(head_dim)]
    tp.prune_linear_out_channels(m.k_proj, kv_idxs)
    tp.prune_linear_out_channels(m.v_proj, kv_idxs)
    tp.prune_linear_out_channels(m.q_proj, q_idxs)
    tp.prune_linear_in_channels(m.o_proj, q_idxs)
