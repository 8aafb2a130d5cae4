"""Pruning a BERT-base trial's groups: one dependency graph for all of them, against one per pruned attention block.

    python experiments/bert_base/prune_time.py [--mixes 4]

`tuner.build.prune.prune` traces the model once for its groups (and MetaPruner once for the FFN units), and prunes
every attention block's heads through that graph. Before, each pruned attention block traced the model again.
This script draws the pruning of a sampled trial (half of the 24 head and FFN groups by 0.125-0.5) and prunes it
both ways, alternating; the earlier way is reproduced here with torch-pruning's own calls. Both must give the same
weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch_pruning as tp

from tuner.build import prune as pruning
from tuner.tasks.bert_base import make_task


def prune_a_graph_per_block(model, example_inputs, ratios, output_layers):
    """The earlier way: heads pruned block by block, each through a newly traced dependency graph."""
    original = pruning._prune_heads

    def traced_again(model, graph, group, ratio):
        original(model, pruning._dependency_graph(model, example_inputs), group, ratio)

    pruning._prune_heads = traced_again
    try:
        return pruning.prune(model, example_inputs, ratios, output_layers)
    finally:
        pruning._prune_heads = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task()
    groups = pruning.pruning_groups(task.model, task.example_inputs, task.output_layers)
    rng = np.random.default_rng(0)
    ways = {"one graph": pruning.prune, "a graph per attention block": prune_a_graph_per_block}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for i in range(args.mixes):
        chosen = rng.choice(len(groups), size=len(groups) // 2, replace=False)
        ratios = {groups[g].name: float(rng.choice([0.125, 0.25, 0.375, 0.5])) for g in sorted(chosen)}
        heads = sum(1 for g in chosen if groups[g].head_dim)
        models = {}
        for way in list(ways) if i % 2 == 0 else list(ways)[::-1]:
            start = time.perf_counter()
            models[way] = ways[way](task.model, task.example_inputs, ratios, task.output_layers)
            seconds[way].append(time.perf_counter() - start)
        a, b = (m.state_dict() for m in models.values())
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        print(f"mix {i} ({heads} attention blocks, {len(ratios) - heads} FFN groups): "
              + ", ".join(f"{way} {seconds[way][-1]:.1f} s" for way in ways) + f"; same weights: {same}", flush=True)
    one, per_block = (statistics.median(seconds[way]) for way in ways)
    print(f"\nmedian of {args.mixes}: one graph {one:.1f} s, a graph per attention block {per_block:.1f} s "
          f"({one / per_block:.2f}x); torch-pruning {tp.__version__}")


if __name__ == "__main__":
    main()
