"""Re-time, side by side, every model that was ever on a run's front, so that runs made at once on a noisy machine
are compared on one sitting's timings instead of each trial's single timing.

    python experiments/search/retime.py digits.jsonl --out digits_retimed.jsonl [--rounds 7] [--repeats 40]
    python experiments/search/report.py digits_retimed.jsonl --absolute

Reads benchmark.py's lines of runs made with ``--work DIR --keep-artifacts all`` (their models are on disk).
Runs made on another machine come back without their models (too large to copy): ``--rebuild-into DIR``
rebuilds, here, each kept trial whose model is missing from its ``candidate.json`` (models identical by
candidate are built once) and scores it here too; the run's metric is replaced by this machine's (the one
measured there kept as ``tuning_metric``), so that every point compared was built, scored and timed alike.
In each run, a trial is kept when it was feasible and not dominated by the feasible trials before it: only
those ever count in the run's hypervolume at any trial count. Their models (and the references'), found
identical by content across runs, are timed in one process, round-robin (a new order each round), so that
drifts of the machine hit all of them alike. Written out: the same lines, with each kept trial's latency
replaced by its re-timed median (the tuning one kept as ``tuning_ms``), the others marked ``retimed: false``
(report.py leaves them out), and each run's fp32 baseline the fp32 model's re-timed median.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

from tuner.experiment import load_experiment
from tuner.measure.latency import latency_feeds
from tuner.measure.runtime import load_artifact


def feasible(run: dict, row: dict) -> bool:
    return row["state"] == "COMPLETE" and row["metric_drop"] is not None and \
        row["metric_drop"] <= run["max_metric_drop"]


def ever_on_front(run: dict) -> list[dict]:
    """The run's feasible trials not dominated, when they finished, by the feasible trials before them."""
    sign = 1 if run["maximize"] else -1
    kept, seen = [], []
    for row in sorted(run["rows"], key=lambda r: r["number"]):
        if not feasible(run, row):
            continue
        metric, latency = sign * row["values"][0], row["values"][1]
        if not any(m >= metric and lat <= latency for m, lat in seen):
            kept.append(row)
        seen.append((metric, latency))
    return kept


def model_path(run: dict, row: dict) -> Path:
    return Path(run["run_dir"]) / "artifacts" / row["key"] / "model.onnx"


def digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


class Rebuilder:
    """Builds (and scores) missing models from their ``candidate.json``, once per distinct candidate."""

    def __init__(self, experiment, task, root: Path):
        from tuner.evaluate import Evaluator

        self.evaluator = Evaluator(experiment.task_ref(), experiment.eval_settings(), root, task=task)
        self.built: dict[str, tuple[Path, float]] = {}  # candidate (as JSON) -> model path, metric here

    def __call__(self, candidate_file: Path) -> tuple[Path, float]:
        from tuner.core.records import ArtifactRecord

        candidate = dict(ArtifactRecord.read(candidate_file).candidate)
        known = json.dumps(candidate, sort_keys=True)
        if known not in self.built:
            started = time.perf_counter()
            result = self.evaluator.build_and_score(candidate)
            if not result.completed:
                raise RuntimeError(f"{candidate_file}: the rebuild failed: {result.error}")
            self.built[known] = (Path(result.artifact_dir) / "model.onnx", result.metric)
            print(f"rebuilt {candidate_file.parent.name} in {time.perf_counter() - started:.0f} s: metric "
                  f"{result.metric:.4f}", flush=True)
        return self.built[known]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rebuild-into", help="rebuild (and score here) the kept models that are not on disk")
    args = parser.parse_args()
    runs = [json.loads(line) for line in open(args.records) if line.strip()]
    experiment = load_experiment(runs[0]["experiment_file"])
    task = experiment.task_ref().load()
    rebuild = Rebuilder(experiment, task, Path(args.rebuild_into)) if args.rebuild_into else None
    wanted: dict[tuple[int, int], str] = {}  # (run index, trial number) -> model digest
    paths: dict[str, Path] = {}
    rescored: dict[tuple[int, int], float] = {}  # (run index, trial number) -> metric of the rebuilt model
    missing = 0
    for i, run in enumerate(runs):
        # and every reference (fp32, the uniform precisions; the same models in every run, timed once), feasible
        # or not: a front is judged against them
        references = [r for r in run["rows"] if r["reference"] and r["state"] == "COMPLETE"]
        for row in ever_on_front(run) + references:
            path = model_path(run, row)
            if not path.is_file() and rebuild is not None and path.with_name("candidate.json").is_file():
                path, rescored[(i, row["number"])] = rebuild(path.with_name("candidate.json"))
            if not path.is_file():
                missing += 1
                continue
            wanted[(i, row["number"])] = digest(path)
            paths.setdefault(wanted[(i, row["number"])], path)
    if missing:
        print(f"{missing} models of trials that were on a front are not on disk (run with --keep-artifacts all); "
              "left out", file=sys.stderr)
    sessions = {key: load_artifact(path, args.threads) for key, path in paths.items()}
    names = [i.name for i in next(iter(sessions.values())).get_inputs()]
    feeds = latency_feeds(task, names, experiment.latency.batch_size)  # the inputs the trials were timed with
    print(f"{len(runs)} runs, {len(wanted)} trials ever on a front (and fp32), {len(sessions)} distinct models; "
          f"{args.rounds} rounds x {args.repeats} runs each, {args.threads} thread(s)", flush=True)
    for session in sessions.values():
        for _ in range(10):
            session.run(None, feeds)
    times: dict[str, list[float]] = {key: [] for key in sessions}
    order = list(sessions)
    shuffle = random.Random(0)
    started = time.perf_counter()
    for round_ in range(args.rounds):
        shuffle.shuffle(order)
        for key in order:
            session = sessions[key]
            for _ in range(args.repeats):
                start = time.perf_counter()
                session.run(None, feeds)
                times[key].append((time.perf_counter() - start) * 1e3)
        print(f"round {round_ + 1}/{args.rounds} done at {time.perf_counter() - started:.0f} s", flush=True)
    median = {key: statistics.median(t) for key, t in times.items()}

    with open(args.out, "w") as out:
        for i, run in enumerate(runs):
            for row in run["rows"]:
                key = wanted.get((i, row["number"]))
                row["retimed"] = key is not None
                if key is not None and row["values"]:
                    row["tuning_ms"] = row["values"][1]
                    row["values"] = [row["values"][0], median[key]]
                if (i, row["number"]) in rescored:  # built and scored here: this machine's metric
                    metric = rescored[(i, row["number"])]
                    row["tuning_metric"] = row["values"][0]
                    row["metric_drop"] = (run["baseline"]["metric"] - metric) * (1 if run["maximize"] else -1)
                    row["values"] = [metric, row["values"][1]]
            fp32 = next((r for r in run["rows"] if r["reference"] == "fp32" and r["retimed"]), None)
            if fp32 is not None:
                run["baseline"] = {**run["baseline"], "tuning_latency_ms": run["baseline"]["latency_ms"],
                                   "latency_ms": fp32["values"][1]}
            run["retimed"] = {"rounds": args.rounds, "repeats": args.repeats, "threads": args.threads,
                              "models": len(sessions), "rebuilt": sum(k[0] == i for k in rescored)}
            out.write(json.dumps(run) + "\n")
    ratios = [r["tuning_ms"] / r["values"][1] for run in runs for r in run["rows"] if r.get("tuning_ms")]
    print(f"tuning / re-timed latency over {len(ratios)} trials: median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
