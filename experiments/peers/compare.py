"""Every peer's models and `tuner`'s front, scored and timed in one process on the same ONNX Runtime settings.

Builds nothing. For one model: the task's metric (`tuner`'s own task, whole evaluation set) of every ONNX file under
work/<model>/<tool>/ (each tool's run.json lists them), then latency in round robin: each round times every file once
(`tuner.measure.latency.measure_latency`, the experiment's threads, batch, warm-up and repeats), so that every ratio
is taken side by side; the speedup is over fp32 in the same round, and the table shows its median over rounds.

    python experiments/peers/compare.py digits_cnn --rounds 5 --out experiments/peers/digits_cnn.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tuner.experiment import load_experiment
from tuner.measure.latency import artifact_feeds, measure_latency
from tuner.measure.quality import score_all
from tuner.measure.runtime import load_artifact

HERE = Path(__file__).parent
TOOLS = ("tuner", "inc", "olive", "quark", "aimet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = args.work / args.model
    meta = json.loads((folder / "meta.json").read_text())
    experiment = load_experiment(HERE / f"{args.model}.yaml")
    task = experiment.task_ref().load()
    settings = experiment.eval_settings()
    runs = {t: json.loads((folder / t / "run.json").read_text()) for t in TOOLS if (folder / t / "run.json").is_file()}
    files = [("fp32", "fp32", folder / "fp32.onnx")]
    files += [(tool, name, folder / tool / name) for tool, run in runs.items() for name in run["models"]]

    rows = []
    for tool, name, path in files:
        session = load_artifact(path, settings.threads)
        metric, extra = score_all(session, task.evaluation)
        rows.append({"tool": tool, "model_file": name, "metric": metric, "extra": extra, "session": session,
                     "feeds": artifact_feeds(task, path, settings.batch_size), "size_mb": path.stat().st_size / 1e6,
                     "ms": []})
        print(f"{tool:6s} {name:28s} {meta['metric']} {metric:.4f}", flush=True)
    for r in range(args.rounds):
        for row in rows:
            row["ms"].append(measure_latency(row["session"], row["feeds"], settings.warmup, settings.repeats).median_ms)
        print(f"round {r + 1}/{args.rounds}", flush=True)
    fp32_ms = np.array(rows[0]["ms"])
    for row in rows:
        row["median_ms"] = float(np.median(row["ms"]))
        row["speedup"] = float(np.median(fp32_ms / np.array(row["ms"])))
        del row["session"], row["feeds"]
    if args.out:
        with open(args.out, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
            f.write(json.dumps({"runs": runs, "meta": meta}) + "\n")
    print(table(rows, runs, meta))


def table(rows: list[dict], runs: dict, meta: dict) -> str:
    """Per constraint: each tool's fastest model within it, its front size, wall time, evaluations."""
    lines = []
    for constraint in meta["constraints"]:
        lines += [f"\n{meta['model']}: {meta['metric']} >= {constraint['min']:.4f} (fp32 {meta['fp32']:.4f} - "
                  f"{constraint['drop']})", "",
                  "| tool | fastest within | speedup over fp32 | metric | models output | wall s | full evaluations | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for tool, run in runs.items():
            mine = [r for r in rows if r["tool"] == tool]
            within = [r for r in mine if r["metric"] >= constraint["min"]]
            best = max(within, key=lambda r: r["speedup"]) if within else None
            evaluations = run.get("evaluations")
            if run.get("probes"):
                evaluations = f"{evaluations} + {run['probes']} probes"
            lines.append(f"| {run['peer']} | {best['model_file'] if best else 'none'} | "
                         f"{best['speedup']:.2f}x | {best['metric']:.4f} | " if best else
                         f"| {run['peer']} | none | - | - | ")
            lines[-1] += f"{len(mine)} | {run['wall_s']} | {evaluations} | {run['status'][:160]} |"
    return "\n".join(lines)


if __name__ == "__main__":
    main()
