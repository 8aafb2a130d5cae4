"""Validate tuner's per-layer latency model: predicted vs measured latency of random candidates.

    python experiments/latency_model/validate.py experiments/digits_cnn/experiment.yaml --candidates 50
    python experiments/latency_model/validate.py experiments/minilm/broad/experiment.yaml --candidates 50

The model is fitted from ORT profiles of the experiment's references (fp32 and each uniform precision, each
also pruned at every group's largest ratio) and of fp32 at every other opt level / fusion set the space
offers. Random candidates of the space are built too; then every artifact, references and candidates alike,
is timed as a study times it (warm-up, repeats, median) in ``--rounds`` interleaved rounds in shuffled order,
and its latency is the median over rounds: on a shared machine, one timing of one artifact can be off by 40%.
The model is fitted on the references' latencies from those same rounds. Prints per-candidate rows, the
median / p90 relative error and the rank correlation (Spearman) of predicted vs measured.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tuner.core.candidate import Candidate
from tuner.evaluate import Evaluator, check_runnable, time_artifact
from tuner.experiment import load_experiment
from tuner.search.latency_check import spearman
from tuner.search.latency_model import LatencyModel, prune_shapes, reference_costs
from tuner.search.setup import prepare


def random_params(space, rng: random.Random) -> dict:
    params = {}
    for name, dist in space.distributions().items():
        params[name] = rng.choice(list(dist.choices)) if hasattr(dist, "choices") else rng.choice(
            list(np.arange(dist.low, dist.high + 1e-9, dist.step or (dist.high - dist.low))))
    return params


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile-runs", type=int, default=30)
    args = parser.parse_args()

    started = time.perf_counter()
    experiment = load_experiment(args.experiment)
    task, space = prepare(experiment, log=lambda line: print(line, file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="latency-model-"))
    evaluator = Evaluator(experiment.task_ref(), experiment.eval_settings(), work / "artifacts", task=task)

    references = [space.decode(params) for _, params in space.references()]
    largest = {name: max(choices) for name, choices in space.prune_choices.items()}
    pruned = [Candidate(c.precision, tuple(largest.items()), c.opt_level, c.fusions, c.disabled_optimizers,
                        space.recovery[0], space.importance[0]) for c in references] if largest else []
    configs = [(level, fusions) for level in space.opt_levels
               for n in range(len(space.transformer_fusions) + 1)
               for fusions in itertools.combinations(space.transformer_fusions, n)]
    fp32_configs = [Candidate(opt_level=level, fusions=fusions) for level, fusions in configs
                    if (level, tuple(sorted(fusions))) != (references[0].opt_level, references[0].fusions)]
    profiled = references + pruned + fp32_configs

    rng = random.Random(args.seed)
    candidates: list[Candidate] = []
    while len(candidates) < args.candidates:
        candidate = space.decode(random_params(space, rng))
        try:
            check_runnable(candidate)
            evaluator.build(candidate, evaluator.artifact_root / candidate.key(evaluator.fingerprint), {})
        except Exception as exc:  # a candidate ORT cannot run as asked: not a latency-model question
            print(f"# skipped (does not build: {str(exc)[:120]})", file=sys.stderr)
            continue
        candidates.append(candidate)
    for candidate in profiled:
        artifact = evaluator.artifact_root / candidate.key(evaluator.fingerprint)
        if not (artifact / "model.onnx").is_file():
            evaluator.build(candidate, artifact, {})
    built_s = time.perf_counter() - started

    everything = profiled + candidates
    paths = [evaluator.artifact_root / c.key(evaluator.fingerprint) / "model.onnx" for c in everything]
    times: list[list[float]] = [[] for _ in everything]
    for _ in range(args.rounds):
        order = list(range(len(everything)))
        rng.shuffle(order)
        for i in order:
            times[i].append(time_artifact(paths[i], evaluator.feeds(paths[i]), evaluator.settings)[0].median_ms)
    measured = [statistics.median(t) for t in times]
    spread = [(max(t) - min(t)) / statistics.median(t) for t in times]

    start = time.perf_counter()
    costs = [reference_costs(evaluator, c, measured[i], args.profile_runs) for i, c in enumerate(profiled)]
    fit_s = time.perf_counter() - start
    model = LatencyModel.fit(zip(profiled, costs), prune_shapes(space.groups, space.prune_choices, space.round_to))
    print(f"# {experiment.name}: {len(space.layers)} layers, {len(space.groups)} pruning groups; "
          f"{len(profiled)} profiled references (profiles {fit_s:.0f} s); {len(candidates)} random candidates; "
          f"{args.rounds} interleaved timing rounds; median round-to-round spread of one artifact "
          f"{statistics.median(spread):.1%}; builds {built_s:.0f} s")
    for candidate, cost in zip(profiled, costs):
        print(f"#   {candidate.summary():62s} wall {cost.wall_ms:8.3f} ms  layers {sum(cost.layer_ms.values()):8.3f}"
              f"  rest {cost.rest_ms:7.3f}  rest ops: {', '.join(cost.unattributed)}")
    rows = []
    print("i,predicted_ms,measured_ms,rel_error,round_spread,summary")
    for i, candidate in enumerate(candidates):
        j = len(profiled) + i
        predicted = model.predict(candidate)
        rows.append((predicted, measured[j]))
        print(f"{i + 1},{predicted:.4f},{measured[j]:.4f},{(predicted - measured[j]) / measured[j]:+.3f},"
              f"{spread[j]:.3f},\"{candidate.summary()}\"")
    errors = [abs(p - m) / m for p, m in rows]
    print(f"# {experiment.name}: {len(rows)} random candidates: median |relative error| "
          f"{statistics.median(errors):.3f}, p90 {float(np.percentile(errors, 90)):.3f}, "
          f"within 10%: {sum(e <= 0.10 for e in errors)}/{len(rows)}, Spearman rank correlation "
          f"{spearman([p for p, _ in rows], [m for _, m in rows]):.3f}; total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
