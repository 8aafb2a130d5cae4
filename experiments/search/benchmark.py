"""Search efficiency: hypervolume against trials and against wall seconds, per search strategy.

    python experiments/search/benchmark.py experiments/digits_cnn/experiment.yaml \
        --strategies random tpe nsga2 gp seeded --seeds 0 1 --trials 100 --out experiments/search/digits.jsonl
    python experiments/search/report.py digits.jsonl   # (see report.py)

Each (strategy, seed) is one full `tuner run` of the experiment, in process (one candidate at a time: every
strategy gets the same machine), with its own run directory and MLflow store. ``seeded`` is TPE after a
sensitivity pass and the latency model's seeds (``seeding: {seeds: 8}``); ``seeded-screened`` also screens
each trial on 128 samples first (``screening``); ``default`` is what an experiment that sets neither gets
(``sampler: auto``, ``seeding: {seeds: auto}``: the plan of tuner.search.plan, then TPE); ``refs-then-tpe`` is
the default before the plan (TPE right after the references). adds.py reports what each adds beyond the references.
The samplers alone (random, tpe, nsga2, gp) run without seeding, whatever the experiment file says. One JSON line per run: every
trial's metric, latency, feasibility and completion time, the fp32 baseline, and the sensitivity pass's
cost, so that report.py can count the pass as trials and as seconds.

``--work DIR`` keeps each run's directory under DIR, and a run found there is continued, not started again
(a run stopped by SIGINT/SIGTERM records what it has; run the same command again to finish it): for a lent
machine whose calls are limited in time. Its seconds are those of its sittings, not of the gaps between them.
``--keep-artifacts all`` keeps every trial's model there, for retime.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import yaml

import tuner
from tuner.core.records import StudyMeta, TrialMeta
from tuner.core.stop import StudyStopped
from tuner.core.storage import load_finished_study
from tuner.core.vocab import KEEP_ARTIFACTS
from tuner.search.sensitivity import read_rows

# strategy -> what it sets in the experiment
# (a sampler alone is seeds: 0, whatever the experiment file or the default says)
STRATEGIES = {**{kind: {"sampler": kind, "seeding": {"seeds": 0}} for kind in ("random", "tpe", "nsga2", "gp")},
              "default": {"sampler": "auto", "seeding": {"seeds": "auto"}},
              # the default before the plan: the sampler right after the references
              "refs-then-tpe": {"sampler": "tpe", "seeding": {"seeds": 0}},
              # the plan, then TPE alone (`sampler: tpe` in an experiment file, as the digits pruning example has it)
              "plan-then-tpe": {"sampler": "tpe", "seeding": {"seeds": "auto"}},
              # the default with every layer ranked on its own up to 64 searched layers (ResNet-50's 54)
              "default-per-layer": {"sampler": "auto", "seeding": {"seeds": "auto", "max_groups": 64}},
              "seeded": {"sampler": "tpe", "seeding": {"seeds": 8}},
              "seeded-screened": {"sampler": "tpe", "seeding": {"seeds": 8}, "screening": {"samples": 128}}}


class Sittings:
    """The wall-clock spans a run was running in (one per command that ran it), saved beside its run directory,
    so that a trial's completion time is the run's own seconds up to it, not counting the gaps between spans.
    A span is saved as it starts; one whose command was killed before it ended is closed at the last trial
    that finished within it."""

    def __init__(self, path: Path):
        self.path = path
        self.spans: list[list[float]] = json.loads(path.read_text()) if path.is_file() else []

    def start(self) -> None:
        self.spans.append([time.time(), time.time()])
        self.path.write_text(json.dumps(self.spans))

    def end(self, finished: list[float]) -> None:
        """Close this span now, and any earlier one left open at its last finished trial."""
        self.spans[-1][1] = time.time()
        for span, following in zip(self.spans, self.spans[1:]):
            span[1] = max([span[1]] + [t for t in finished if span[0] <= t < following[0]])
        self.path.write_text(json.dumps(self.spans))

    def elapsed_at(self, timestamp: float) -> float:
        before = 0.0
        for start, end in self.spans:
            if timestamp <= end or [start, end] == self.spans[-1]:
                return before + max(timestamp - start, 0.0)
            before += end - start
        return before

    @property
    def seconds(self) -> float:
        return sum(end - start for start, end in self.spans)


def run_one(base: dict, source: Path, strategy: str, seed: int, trials: int, work: Path,
            keep_artifacts: str = "front") -> dict:
    name = f"{base['name']}-{strategy}-{seed}"
    config = {**base, "name": name, "seed": seed, "trials": trials, "keep_artifacts": keep_artifacts,
              **STRATEGIES[strategy]}
    if config.get("search_space", "auto") != "auto":
        config["search_space"] = str((source.parent / config["search_space"]).resolve())
    module, _, function = config["task"].rpartition(":")
    if module.endswith(".py"):  # a task file beside the experiment: this copy of the experiment lives elsewhere
        config["task"] = f"{(source.parent / module).resolve()}:{function}"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    lines: list[str] = []
    sittings = Sittings(work / f"{name}.sittings.json")
    sittings.start()
    result, stopped = None, False
    try:
        result = tuner.run(path, output_dir=work / "runs", tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                           in_process=True, progress=False,
                           log=lambda line: (lines.append(line), print(line, flush=True)))
    except (StudyStopped, KeyboardInterrupt):  # what it has is recorded; the same command continues it
        stopped = True
    run_dir = work / "runs" / name
    study = load_finished_study(name, work / "runs")
    sittings.end([t.datetime_complete.timestamp() for t in study.trials if t.datetime_complete])
    meta = StudyMeta.load(study)
    probes = []
    cache = run_dir / "sensitivity.jsonl"
    if cache.is_file():  # a probe scored twice (two looks) has two rows; the last holds both looks' seconds
        probes = [asdict(row) for row in {row.id: row for row in read_rows(cache)}.values()]
    rows = []
    for t in study.trials:
        if t.state.name in ("RUNNING", "WAITING"):
            continue
        rows.append({"number": t.number, "state": t.state.name, "values": t.values,
                     "metric_drop": t.user_attrs.get("metric_drop"), "reference": t.user_attrs.get("reference", ""),
                     "seed": t.user_attrs.get("seed", ""), "key": TrialMeta.of(t).key,
                     "stage": TrialMeta.of(t).origin, "plan": TrialMeta.of(t).plan,
                     "completed_at": sittings.elapsed_at(t.datetime_complete.timestamp())
                     if t.datetime_complete else None})
    return {"experiment": base["name"], "experiment_file": str(source), "strategy": strategy, "seed": seed,
            "trials": trials, "stopped": stopped, "run_dir": str(run_dir.resolve()),
            "wall_s": sittings.seconds, "baseline": {"metric": meta.baseline_metric,
                                                    "latency_ms": meta.baseline_latency_ms},
            "max_metric_drop": config.get("max_metric_drop"),
            "maximize": study.directions[0].name == "MAXIMIZE", "sensitivity_probes": len(probes),
            "sensitivity_s": sum(p["seconds"] for p in probes),
            "sensitivity_lines": [line for line in lines if line.startswith("sensitivity")],
            "latency_model": None if result is None or result.latency_model is None else result.latency_model.__dict__,
            "screened": result.n_screened if result is not None else
            sum(t.state.name == "PRUNED" and "fail_reason" not in t.user_attrs for t in study.trials),
            "rows": rows}


def write_record(out: Path, record: dict) -> None:
    """Append the run's line to ``out``, replacing an earlier line of the same run (a continued run)."""
    same = (record["experiment"], record["strategy"], record["seed"])
    kept = []
    if out.is_file():
        kept = [line for line in out.read_text().splitlines()
                if line.strip() and tuple(json.loads(line)[k] for k in ("experiment", "strategy", "seed")) != same]
    out.write_text("".join(line + "\n" for line in kept + [json.dumps(record)]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", help="keep run directories here, and continue the runs found here")
    parser.add_argument("--keep-artifacts", choices=KEEP_ARTIFACTS, default="front")
    args = parser.parse_args()
    source = Path(args.experiment).resolve()
    base = yaml.safe_load(source.read_text())
    for seed in args.seeds:
        for strategy in args.strategies:
            if args.work:
                Path(args.work).mkdir(parents=True, exist_ok=True)
                record = run_one(base, source, strategy, seed, args.trials, Path(args.work), args.keep_artifacts)
            else:
                with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
                    record = run_one(base, source, strategy, seed, args.trials, Path(tmp), args.keep_artifacts)
            write_record(Path(args.out), record)
            complete = [r for r in record["rows"] if r["state"] == "COMPLETE"]
            print(f"{strategy} seed {seed}: {len(complete)} complete of {len(record['rows'])} in "
                  f"{record['wall_s']:.0f} s; sensitivity {record['sensitivity_probes']} probes, "
                  f"{record['sensitivity_s']:.0f} s" + ("; stopped, the same command continues it" if record["stopped"] else ""),
                  flush=True)
            if record["stopped"]:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
