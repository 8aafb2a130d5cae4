"""Does a pruning ratio pay off on ONNX Runtime? MACs and parameter ratios against measured latency ratios.

For the digits CNN and all-MiniLM-L6-v2, every prunable group is pruned by the same ratio (CNN: conv channels,
rounded to multiples of 8; MiniLM: whole attention heads and FFN units), built into fp32 and int8 artifacts
exactly as a study builds them, and timed interleaved in one process (1 thread, batch 1).

    python experiments/pruning/speedup.py [--tasks cnn minilm] [--rounds 5] [--repeats 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from tuner.build.layers import quantizable_layers
from tuner.build.prune import pruning_groups
from tuner.core.candidate import Candidate
from tuner.evaluate import EvalSettings, Evaluator
from tuner.measure.latency import latency_feeds
from tuner.measure.runtime import load_artifact
from tuner.taskref import TaskRef

TASKS = {
    "cnn": ("tuner.tasks.digits_cnn:make_task", {}, "int8", ("fc",)),
    "minilm": ("tuner.tasks.minilm:make_task", {"n_eval": 64}, "int8-dynamic-pc", None),
}
RATIOS = (0.0, 0.25, 0.5, 0.75)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    for name in args.tasks:
        spec, task_args, quantized, outputs = TASKS[name]
        with tempfile.TemporaryDirectory() as tmp:
            evaluator = Evaluator(TaskRef(spec, task_args), EvalSettings(warmup=1, repeats=5), tmp)
            task = evaluator.task
            outputs = outputs or tuple(n for n in quantizable_layers(task.model) if n.endswith("output.dense"))
            groups = pruning_groups(task.model, task.example_inputs, outputs)
            rows = []
            for ratio in RATIOS:
                for precision in ("fp32", quantized):
                    candidate = Candidate(
                        precision=tuple((layer, precision) for layer in evaluator.layers),
                        prune=tuple((g.name, ratio) for g in groups), recovery="none")
                    outcome = evaluator.evaluate(candidate)
                    if outcome.state != "COMPLETE":
                        raise SystemExit(f"{name} ratio {ratio} {precision}: {outcome.error}")
                    rows.append({"ratio": ratio, "precision": precision, "stats": outcome.model_stats,
                                 "session": load_artifact(f"{outcome.artifact_dir}/model.onnx")})
            feeds = latency_feeds(task, [i.name for i in rows[0]["session"].get_inputs()], 1)
            times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
            for i, row in enumerate(rows):
                for _ in range(10):
                    row["session"].run(None, feeds)
            for _ in range(args.rounds):
                for i, row in enumerate(rows):
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        row["session"].run(None, feeds)
                        times[i].append(time.perf_counter() - start)
            base = {p: np.median(times[i]) for i, r in enumerate(rows) if r["ratio"] == 0 for p in [r["precision"]]}
            kinds = {"heads": sum(1 for g in groups if g.head_dim), "channels": sum(1 for g in groups if not g.head_dim)}
            print(f"\n{name}: {len(groups)} groups ({kinds['heads']} attention-head groups, {kinds['channels']} "
                  f"channel groups), {args.rounds} interleaved rounds x {args.repeats} runs, 1 thread, batch 1")
            print(f"{'ratio':>5}  {'precision':<16} {'MACs':>6} {'params':>7} {'latency ms':>10} {'MACs speedup':>12} "
                  f"{'measured speedup':>16}")
            for i, row in enumerate(rows):
                median = np.median(times[i])
                stats = row["stats"]
                print(f"{row['ratio']:>5.2f}  {row['precision']:<16} {stats['macs_ratio']:>6.3f} "
                      f"{stats['params_ratio']:>7.3f} {median * 1e3:>10.3f} {1 / stats['macs_ratio']:>11.2f}x "
                      f"{base[row['precision']] / median:>15.2f}x")


if __name__ == "__main__":
    main()
