"""Re-measure a finished study's front and references side by side, interleaved, in one process.

During a study each trial is timed once, while other work may run beside it. This script loads every front
member and reference artifact of a study, then times them round-robin (``--rounds`` rounds of
``--repeats`` runs each, after a warm-up), so slow drifts of the machine hit all of them alike, and prints
medians and ratios against fp32 and against the fastest reference.

    python experiments/remeasure.py minilm [--output-dir tuner-runs] [--rounds 7] [--repeats 40]
    python experiments/remeasure.py digits-cnn-precision digits-cnn-pruning   # several studies of one task, side by side
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from tuner.core.storage import load_finished_study
from tuner.experiment import load_experiment
from tuner.measure.latency import latency_feeds
from tuner.measure.runtime import load_artifact


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", metavar="study")
    parser.add_argument("--output-dir", default="tuner-runs")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    entries, run_dirs = {}, {}
    for name in args.studies:
        study = load_finished_study(name, args.output_dir)
        metric = study.user_attrs["metric_name"]
        run_dir = Path(args.output_dir) / name
        prefix = f"{name}: " if len(args.studies) > 1 else ""
        for row in rows(run_dir / "references.csv"):
            entries[f"{prefix}ref: {row['reference']}"] = row
            run_dirs[f"{prefix}ref: {row['reference']}"] = run_dir
        for row in rows(run_dir / "pareto.csv"):
            label = f"{prefix}front: trial {row['trial']}"
            if not row.get("reference"):
                entries[label] = row
                run_dirs[label] = run_dir
    experiment = load_experiment(next(p for p in run_dir.glob("*.yaml") if "task:" in p.read_text()))
    task = experiment.task_ref().load()
    sessions = {label: load_artifact(run_dirs[label] / "artifacts" / row["key"] / "model.onnx", args.threads)
                for label, row in entries.items()}
    names = [i.name for i in next(iter(sessions.values())).get_inputs()]
    feeds = latency_feeds(task, names, experiment.latency.batch_size)  # the inputs tuning timed with
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for session in sessions.values():
        for _ in range(10):
            session.run(None, feeds)
    for _ in range(args.rounds):
        for label, session in sessions.items():
            for _ in range(args.repeats):
                start = time.perf_counter()
                session.run(None, feeds)
                times[label].append((time.perf_counter() - start) * 1e3)
    medians = {label: float(np.median(t)) for label, t in times.items()}
    fp32 = next((v for k, v in medians.items() if k.endswith("ref: fp32")), None)
    print(f"studies {', '.join(args.studies)}: {len(sessions)} artifacts, {args.rounds} interleaved rounds x {args.repeats} runs, "
          f"{args.threads} thread(s)")
    print(f"{'artifact':<48} {metric:>8} {'tuning ms':>10} {'now ms':>8} {'vs fp32':>8}  choices")
    for label, row in sorted(entries.items(), key=lambda kv: medians[kv[0]]):
        speedup = f"{fp32 / medians[label]:.2f}x" if fp32 else "-"
        print(f"{label:<48} {float(row[metric]):>8.4f} {float(row['latency_ms']):>10.3f} {medians[label]:>8.3f} "
              f"{speedup:>8}  {row['summary']}")


if __name__ == "__main__":
    main()
