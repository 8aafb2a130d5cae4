"""Which sensitivity ranking keeps more of the metric: ``one_in`` or ``one_out`` (NNCF-style)?

    python experiments/sensitivity_modes/compare.py experiments/minilm/broad/experiment.yaml --choice int8-dynamic

Both passes rank the layer groups for one precision ``--choice``, each probe scored on ``--samples`` evaluation
samples as the study's sensitivity pass does (``one_in``: only that group at the choice; ``one_out``: every
layer at the choice but that group, which goes back to fp32). Each ranking is then judged by what it is used
for: the uniform candidate at the choice with the ``k`` groups it ranks most sensitive kept in fp32, scored on
the whole evaluation set, for several ``k``. The better ranking keeps more of the metric for the same ``k``.
Metric only (nothing is timed), so the numbers do not depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tuner.core.candidate import Candidate
from tuner.core.precision import FP32
from tuner.core.records import Fidelity
from tuner.evaluate import Evaluator
from tuner.experiment import load_experiment
from tuner.search.latency_check import spearman
from tuner.search.sensitivity import probes
from tuner.search.setup import prepare


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment")
    parser.add_argument("--choice", required=True, help="the precision kind whose layer ranking is compared")
    parser.add_argument("--samples", type=int, default=128, help="evaluation samples per probe (the pass's default)")
    parser.add_argument("--keep", type=int, nargs="+", default=[0, 1, 2, 4, 6, 9, 12, 18],
                        help="numbers of most sensitive groups kept in fp32")
    args = parser.parse_args()

    experiment = load_experiment(args.experiment)
    task, space = prepare(experiment, log=lambda line: print(line, file=sys.stderr))
    evaluator = Evaluator(experiment.task_ref(), experiment.eval_settings(),
                          Path(tempfile.mkdtemp(prefix="sensitivity-modes-")) / "artifacts", task=task)
    maximize = task.evaluation.direction == "maximize"
    level = space.opt_levels[-1]

    def score(candidate: Candidate, samples: int | None) -> float:
        result = evaluator.build_and_score(candidate, Fidelity(samples=samples, timed=False))
        if not result.completed:
            raise RuntimeError(f"{candidate}: {result.error}")
        return result.metric

    uniform = space.decode(space.uniform_params(args.choice))
    fp32_metric = score(space.decode(space.uniform_params(FP32)), args.samples)
    uniform_subset = score(uniform, args.samples)
    rankings: dict[str, list[tuple[str, ...]]] = {}
    drops: dict[str, dict[tuple[str, ...], float]] = {}
    cost: dict[str, float] = {}
    for mode in ("one_in", "one_out"):
        started = time.perf_counter()
        todo = [p for p in probes(space, mode) if p.kind == "precision" and p.choice == args.choice]
        drops[mode] = {}
        for probe in todo:
            metric = score(probe.candidate, args.samples)
            # larger = more sensitive: what the group alone loses, or what putting it back to fp32 recovers
            drop = (fp32_metric - metric) if mode == "one_in" else (metric - uniform_subset)
            drops[mode][probe.layers] = drop if maximize else -drop
        cost[mode] = time.perf_counter() - started
        rankings[mode] = sorted(drops[mode], key=lambda g: -drops[mode][g])
        print(f"# {mode}: {len(todo)} probes on {args.samples} samples in {cost[mode]:.0f} s", flush=True)

    groups = list(drops["one_in"])
    agreement = spearman([drops["one_in"][g] for g in groups], [drops["one_out"][g] for g in groups])
    print(f"# {experiment.name}, choice {args.choice}: {len(groups)} groups; fp32 {task.evaluation.metric_name} "
          f"{fp32_metric:.4f} and uniform {uniform_subset:.4f} on the subset; rank correlation of the two "
          f"rankings {agreement:.2f}")
    for mode in rankings:
        print(f"# {mode} most sensitive first: " + ", ".join(
            f"{'+'.join(g)} ({drops[mode][g]:+.4f})" for g in rankings[mode][:8]))

    precision = dict(uniform.precision)
    rows = []
    for k in [k for k in args.keep if k <= len(groups)]:
        row = [k]
        for mode in ("one_in", "one_out"):
            kept = {layer for group in rankings[mode][:k] for layer in group}
            mixed = Candidate(tuple((n, FP32 if n in kept else c) for n, c in precision.items()), opt_level=level)
            row.append(score(mixed, None))
        rows.append(row)
        print(f"k={k}: one_in {row[1]:.4f}  one_out {row[2]:.4f}", file=sys.stderr, flush=True)
    name = task.evaluation.metric_name
    print(f"\n| groups kept in fp32 | {name}, one_in ranking | {name}, one_out ranking |\n|---|---|---|")
    for k, a, b in rows:
        print(f"| {k} | {a:.4f} | {b:.4f} |")
    better = [(b - a) if maximize else (a - b) for _, a, b in rows[1:]]
    print(f"\none_out minus one_in, over k > 0: mean {statistics.mean(better):+.4f}, "
          f"one_out ahead at {sum(d > 0 for d in better)} of {len(better)} k, behind at {sum(d < 0 for d in better)}; "
          f"pass cost one_in {cost['one_in']:.0f} s, one_out {cost['one_out']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
