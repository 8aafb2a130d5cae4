"""Search efficiency: hypervolume against trials and against wall seconds, per search strategy.

    python experiments/search/benchmark.py experiments/digits_cnn/experiment.yaml \
        --strategies random tpe nsga2 gp seeded --seeds 0 1 --trials 100 --out experiments/search/digits.jsonl
    python experiments/search/benchmark.py experiments/search/report.py digits.jsonl   # (see report.py)

Each (strategy, seed) is one full `tuner run` of the experiment, in process (one candidate at a time: every
strategy gets the same machine), with its own run directory and MLflow store. ``seeded`` is TPE after a
sensitivity pass and the latency model's seeds (``seeding: {seeds: 8}``); ``seeded-screened`` also screens
each trial on 128 samples first (``screening``). One JSON line per run: every
trial's metric, latency, feasibility and completion time, the fp32 baseline, and the sensitivity pass's
cost, so that report.py can count the pass as trials and as seconds.
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
from tuner.sensitivity import read_rows
from tuner.storage import load_finished_study

# strategy -> what it sets in the experiment
STRATEGIES = {"random": {"sampler": "random"}, "tpe": {"sampler": "tpe"}, "nsga2": {"sampler": "nsga2"},
              "gp": {"sampler": "gp"}, "seeded": {"sampler": "tpe", "seeding": {"seeds": 8}},
              "seeded-screened": {"sampler": "tpe", "seeding": {"seeds": 8}, "screening": {"samples": 128}}}


def run_one(base: dict, source: Path, strategy: str, seed: int, trials: int, work: Path) -> dict:
    name = f"{base['name']}-{strategy}-{seed}"
    config = {**base, "name": name, "seed": seed, "trials": trials, "keep_artifacts": "front", **STRATEGIES[strategy]}
    if config.get("search_space", "auto") != "auto":
        config["search_space"] = str((source.parent / config["search_space"]).resolve())
    module, _, function = config["task"].rpartition(":")
    if module.endswith(".py"):  # a task file beside the experiment: this copy of the experiment lives elsewhere
        config["task"] = f"{(source.parent / module).resolve()}:{function}"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    lines: list[str] = []
    started = time.time()
    result = tuner.run(path, output_dir=work / "runs", tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                       in_process=True, progress=False, log=lambda line: (lines.append(line), print(line, flush=True)))
    study = load_finished_study(name, work / "runs")
    probes = []
    cache = work / "runs" / name / "sensitivity.jsonl"
    if cache.is_file():  # a probe scored twice (two looks) has two rows; the last holds both looks' seconds
        probes = [asdict(row) for row in {row.id: row for row in read_rows(cache)}.values()]
    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name, "values": t.values,
                     "metric_drop": t.user_attrs.get("metric_drop"), "reference": t.user_attrs.get("reference", ""),
                     "seed": t.user_attrs.get("seed", ""),
                     "completed_at": t.datetime_complete.timestamp() - started if t.datetime_complete else None})
    return {"experiment": base["name"], "strategy": strategy, "seed": seed, "trials": trials,
            "wall_s": result.wall_s, "baseline": result.baseline, "max_metric_drop": config.get("max_metric_drop"),
            "maximize": study.directions[0].name == "MAXIMIZE", "sensitivity_probes": len(probes),
            "sensitivity_s": sum(p["seconds"] for p in probes),
            "sensitivity_lines": [line for line in lines if line.startswith("sensitivity")],
            "latency_model": None if result.latency_model is None else result.latency_model.__dict__,
            "screened": result.n_screened, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    source = Path(args.experiment).resolve()
    base = yaml.safe_load(source.read_text())
    for seed in args.seeds:
        for strategy in args.strategies:
            with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
                record = run_one(base, source, strategy, seed, args.trials, Path(tmp))
            with open(args.out, "a") as out:
                out.write(json.dumps(record) + "\n")
            complete = [r for r in record["rows"] if r["state"] == "COMPLETE"]
            print(f"{strategy} seed {seed}: {len(complete)} complete of {len(record['rows'])} in "
                  f"{record['wall_s']:.0f} s; sensitivity {record['sensitivity_probes']} probes, "
                  f"{record['sensitivity_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
