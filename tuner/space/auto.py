"""The space an experiment gets with ``search_space: auto``: derived from what the model offers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tuner.build.prune import PruningGroup
from tuner.core.precision import KINDS
from tuner.space.file import Fusion, PruneRange, Rule, SpaceFile

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
        ratios = AUTO_PRUNE_RATIOS
        if group.kv_groups:  # a few key/value heads (3 in SmolLM2): steps of one group, up to half of them
            heads = group.channels // group.head_dim
            ratios = tuple(round(k / heads, 6) for k in range(1, heads // 2 + 1))
        usable = [r for r in ratios if group.remaining(r, round_to) >= (group.head_dim or max(round_to, 1))
                  and group.remaining(r, round_to) < group.channels]
        if usable:
            prune_of.update({m: PruneRange(0.0, max(usable), ratios[0]) for m in group.members})
    rules = []
    for index, (layer, op) in enumerate(layer_ops.items()):
        kinds = [k for k in KINDS.values() if op in k.op_types]
        choices = tuple(f"{k.name}-b{AUTO_INT4_BLOCK}" if k.block_sizes else k.name
                        for k in sorted(kinds, key=lambda k: -k.summary_order))
        rules.append(Rule(index, layer, precision=choices, prune=prune_of.get(layer)))
    return SpaceFile(where, tuple(rules), Fusion())
