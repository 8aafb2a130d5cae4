"""What a sensitivity ranking buys in latency: the uniform ``--base`` model with the ``--layers`` a ranking put
first kept in fp32, or at ``--kind``, beside fp32 and the uniform models, every artifact scored on the whole
evaluation set and timed round-robin in one process (``--rounds`` interleaved rounds), so drifts of the machine
hit all alike.

    python experiments/sensitivity_modes/mixes.py experiments/minilm/broad/experiment.yaml --base int8-dynamic \\
        --kind int8-dynamic-pc --layers encoder.encoder.layer.0.output.dense encoder.encoder.layer.2.output.dense
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from tuner.core.candidate import Candidate
from tuner.core.precision import FP32
from tuner.core.records import Fidelity
from tuner.evaluate import Evaluator, time_artifact
from tuner.experiment import load_experiment
from tuner.search.setup import prepare


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment")
    parser.add_argument("--base", required=True)
    parser.add_argument("--kind", required=True, help="the other kind the listed layers take in the second mix")
    parser.add_argument("--layers", nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    experiment = load_experiment(args.experiment)
    task, space = prepare(experiment, log=lambda line: print(line, file=sys.stderr))
    evaluator = Evaluator(experiment.task_ref(), experiment.eval_settings(),
                          Path(tempfile.mkdtemp(prefix="sensitivity-mixes-")) / "artifacts", task=task)
    unknown = [n for n in args.layers if n not in space.precision_choices]
    if unknown:
        parser.error(f"not searched layers of {args.experiment}: {', '.join(unknown)}")
    level = space.opt_levels[-1]

    def uniform(kind: str) -> Candidate:
        return space.decode(space.uniform_params(kind))

    def mixed(kind: str) -> Candidate:
        base = dict(uniform(args.base).precision)
        return Candidate(tuple((n, kind if n in args.layers else c) for n, c in base.items()), opt_level=level)

    k = len(args.layers)
    variants = {"fp32": uniform(FP32), f"uniform {args.base}": uniform(args.base),
                f"uniform {args.kind}": uniform(args.kind), f"{args.base}, {k} listed layers fp32": mixed(FP32),
                f"{args.base}, {k} listed layers {args.kind}": mixed(args.kind)}
    metrics, paths = {}, {}
    for label, candidate in variants.items():
        result = evaluator.build_and_score(candidate, Fidelity(timed=False))
        if not result.completed:
            raise SystemExit(f"{label}: {result.error}")
        metrics[label] = result.metric
        paths[label] = evaluator.artifact_root / candidate.key(evaluator.fingerprint) / "model.onnx"
        print(f"built {label}: {task.evaluation.metric_name} {result.metric:.4f}", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.rounds):
        for label, path in paths.items():
            times[label].append(time_artifact(path, evaluator.feeds(path), evaluator.settings)[0].median_ms)
    median = {label: statistics.median(t) for label, t in times.items()}
    print(f"# {experiment.name}: {args.rounds} interleaved rounds, {experiment.latency.repeats} runs each, "
          f"{experiment.latency.threads} thread(s); listed layers: {', '.join(args.layers)}")
    print(f"| model | {task.evaluation.metric_name} | median ms | spread of rounds | vs uniform {args.base} |")
    print("|---|---|---|---|---|")
    for label in variants:
        spread = (max(times[label]) - min(times[label])) / median[label]
        print(f"| {label} | {metrics[label]:.4f} | {median[label]:.2f} | {spread:.1%} | "
              f"{median[label] / median[f'uniform {args.base}']:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
