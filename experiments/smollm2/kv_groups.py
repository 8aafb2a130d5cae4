"""Grouped-query attention pruned in whole key/value groups on a pretrained decoder, side by side in one process.

    python experiments/smollm2/kv_groups.py [--task tuner.tasks.smollm2:make_task] [--layers 1 4 30]
                                            [--distill-steps 100] [--rounds 3] [--out DIR]

First, in torch: the perplexity with one key/value group (a key/value head and the query heads that read it) pruned
in each attention alone, the attentions ranked by it. Then, through `tuner`'s own evaluator (the study's prune,
export, build, kernel check and perplexity): the least hurt attentions pruned together (``--layers``: how many),
fp32 and with every MatMul 8-bit weight-only (the SmolLM2 study's front kind), and with ``--distill-steps`` of
distillation from fp32 (the `distill` recovery); each artifact's prefill (64-token prompt) and decode step
timed in interleaved rounds, as experiments/smollm2/embedding.py does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from side_by_side import build_all, time_and_print  # beside this script

from tuner.build.prune import kv_pruning_groups, prune
from tuner.core.candidate import Candidate
from tuner.evaluate import EvalSettings, Evaluator
from tuner.measure.quality import TorchSession, score_all
from tuner.taskref import TaskRef


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="tuner.tasks.smollm2:make_task")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 4, 30])
    parser.add_argument("--distill-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--out", help="keep the artifacts here (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="tuner-kv-groups-"))
    settings = EvalSettings(threads=1, batch_size=1, warmup=2, repeats=5, distill_steps=args.distill_steps,
                            recovery_time_limit_s=3600)
    evaluator = Evaluator(TaskRef(args.task, {}, "."), settings, root)
    task = evaluator.task
    groups = kv_pruning_groups(task.model)
    heads = groups[0].channels // groups[0].head_dim
    ratio = round(1 / heads, 6)
    evaluation = task.evaluation
    start = time.perf_counter()
    alone = {}
    for group in groups:
        pruned = prune(task.model, task.example_inputs, {group.name: ratio}, task.output_layers)
        alone[group.name] = score_all(TorchSession(pruned, len(evaluation.inputs)), evaluation)[0]
        del pruned
    ranked = sorted(alone, key=alone.get)
    print(f"{args.task}: {len(groups)} attentions of {heads} key/value heads; one group pruned in each alone "
          f"(torch, {time.perf_counter() - start:.0f} s), perplexity, least hurt first:")
    for name in ranked:
        print(f"  {name.split('+')[0].rsplit('.', 1)[0]:<36} {alone[name]:.3f}")

    matmuls = [layer for layer in evaluator.layers if not layer.endswith("embed_tokens")]

    def candidate(n_layers: int, kind: str | None, recovery: str = "none") -> Candidate:
        return Candidate(prune=tuple((name, ratio) for name in ranked[:n_layers]), recovery=recovery,
                         precision=tuple((layer, kind) for layer in matmuls) if kind else ())

    candidates = {"fp32": Candidate(), "int8-weight-b32": candidate(0, "int8-weight-b32")}
    for n in args.layers:
        candidates[f"{n} pruned, fp32"] = candidate(n, None)
        candidates[f"{n} pruned, int8-weight-b32"] = candidate(n, "int8-weight-b32")
        if args.distill_steps:
            candidates[f"{n} pruned + distill, int8-weight-b32"] = candidate(n, "int8-weight-b32", "distill")
    built, sessions = build_all(evaluator, candidates)
    print(args.task)
    time_and_print(built, sessions, np.asarray(evaluation.inputs[0][:1, :args.prompt]), args.rounds)


if __name__ == "__main__":
    main()
