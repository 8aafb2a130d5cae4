"""Trial throughput of a real study with 1, 2, 4 and 8 workers, the orchestration overhead per trial, and
whether latency measured during the busiest study agrees with the same artifacts timed alone afterwards.

Every study runs the full loop (Optuna journal, local Ray, MLflow sqlite store, live front at the end) on
the built-in digits CNN with the pruning + precision space. The random sampler with a fixed seed proposes
the same candidates whatever the number of workers, so each worker count does the same work.

    python experiments/scaling/bench.py --workers 1 2 4 8 --trials 32 --out /tmp/scaling

Throughput counts the trial phase only: from the first trial's start to the last trial's end (Optuna's
timestamps), without Ray start-up, task loading and the fp32 baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tuner.core.storage import load_finished_study
from tuner.evaluate import Evaluator, time_artifact
from tuner.experiment import Experiment
from tuner.measure.cores import pin, split_cores
from tuner.measure.environment import fingerprint
from tuner.search.study import run_study


def experiment(name: str, trials: int, out: Path, space: str) -> Experiment:
    return Experiment(name=name, task="tuner.tasks.digits_cnn:make_task", search_space=space, trials=trials,
                      sampler="random", seed=0, max_metric_drop=0.02, front_every=10**6, output_dir=str(out),
                      latency={"threads": 1, "batch_size": 1, "warmup": 10, "repeats": 50})


def one_study(workers: int, trials: int, out: Path, space: str) -> dict:
    exp = experiment(f"scale-w{workers}", trials, out, space)
    started = time.perf_counter()
    result = run_study(exp, workers=workers, tracking_uri=f"sqlite:///{out}/mlflow.db", progress=False,
                       log=lambda _: None)
    total = time.perf_counter() - started
    study = load_finished_study(exp.name, out)
    done = [t for t in study.trials if t.state.is_finished()]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    rows = result.timings
    walls = sum(r.get("wall", 0.0) for r in rows)
    return {
        "workers": workers, "trials": len(done), "failed": result.n_failed, "span_s": span, "total_s": total,
        "throughput_per_min": 60 * len(done) / span,
        "median_trial_wall_s": statistics.median(r["wall"] for r in rows),
        "median_build_score_s": statistics.median(r.get("worker_total", 0.0) for r in rows),
        "median_latency_s": statistics.median(r.get("latency", 0.0) for r in rows),
        "overhead_fraction": sum(r.get("orchestration", 0.0) for r in rows) / walls,
        "meter_wait_fraction": sum(r.get("latency_wait", 0.0) for r in rows) / walls,
        "run_dir": str(result.run_dir),
    }


def _spin(cores: list[int]) -> list:
    """One busy-looping process per core (pure ALU work, no memory traffic)."""
    import subprocess

    return [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{c}}})\nwhile True: pass"])
            for c in cores]


def interference(run_dir: Path, exp: Experiment) -> list[dict]:
    """Time the study's artifacts on the latency core while busy loops run on chosen other cores: tells
    frequency scaling (slower with any load) from a shared physical core (slower only with some cores)."""
    study = load_finished_study(run_dir.name, run_dir.parent)
    os.sched_setaffinity(0, range(os.cpu_count()))  # undo agreement()'s pinning before splitting the cores
    cores = split_cores(exp.latency.threads)
    timed = sorted(cores[0]) if cores else [0]
    others = sorted(cores[1]) if cores else []
    pin(set(timed))
    evaluator = Evaluator(exp.task_ref(), exp.eval_settings(), tempfile.mkdtemp())
    paths = [run_dir / "artifacts" / t.user_attrs["key"] / "model.onnx" for t in study.trials
             if t.state.name == "COMPLETE"]
    half = len(others) // 2
    conditions = {"alone": []}
    if half:
        conditions[f"busy on cores {others[0]}-{others[half - 1]}"] = others[:half]
        conditions[f"busy on cores {others[half]}-{others[-1]}"] = others[half:]
    conditions[f"busy on all {len(others)} others"] = others
    alone = None
    rows = []
    for name, busy in conditions.items():
        spinners = _spin(busy)
        time.sleep(1.0)
        try:
            lat = [time_artifact(p, evaluator.feeds(p), exp.eval_settings())[0]["median_ms"] for p in paths]
        finally:
            for proc in spinners:
                proc.kill()
        alone = alone or lat
        ratios = sorted(a / b for a, b in zip(lat, alone))
        rows.append({"condition": name, "median_ratio_to_alone": statistics.median(ratios),
                     "min": ratios[0], "max": ratios[-1]})
    return rows


def agreement(run_dir: Path, exp: Experiment) -> dict:
    """Re-time every completed artifact of a finished study alone (nothing else running), on the core the
    study timed on, as the study did, and compare with the latency recorded while the study was busy."""
    study = load_finished_study(run_dir.name, run_dir.parent)
    cores = split_cores(exp.latency.threads)
    pin(cores[0] if cores else None)
    evaluator = Evaluator(exp.task_ref(), exp.eval_settings(), tempfile.mkdtemp())
    ratios, busy, quiet = [], [], []
    for t in study.trials:
        if t.state.name != "COMPLETE":
            continue
        path = run_dir / "artifacts" / t.user_attrs["key"] / "model.onnx"
        alone, _ = time_artifact(path, evaluator.feeds(path), exp.eval_settings())
        ratios.append(t.values[1] / alone["median_ms"])
        busy.append(t.values[1])
        quiet.append(alone["median_ms"])
    deviations = sorted(abs(r - 1) for r in ratios)
    from scipy.stats import spearmanr

    return {"artifacts": len(ratios), "median_ratio_busy_over_alone": statistics.median(ratios),
            "rank_correlation": float(spearmanr(busy, quiet).statistic),
            "median_abs_deviation": statistics.median(deviations),
            "p90_abs_deviation": deviations[int(0.9 * (len(deviations) - 1))], "max_abs_deviation": deviations[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--out", default=None, help="run directories and MLflow store (default: a temp dir)")
    parser.add_argument("--space", default=str(REPO / "search_spaces" / "cnn_int8_prune.yaml"))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--interference", action="store_true",
                        help="also time the artifacts with busy loops on other cores (frequency vs shared core)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="tuner-scaling-")).resolve()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    env = fingerprint(1)
    print(f"machine: {env['cpu']}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable); "
          f"onnxruntime {env['onnxruntime']}, torch {env['torch']}; {args.trials} trials per study, random sampler")
    results = [one_study(n, args.trials, out, args.space) for n in args.workers]
    base = results[0]["throughput_per_min"] / results[0]["workers"]
    print("\n| workers | trials/min | speedup | vs linear | median trial s (build+score / latency) "
          "| orchestration | waiting for the meter |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        speedup = r["throughput_per_min"] / results[0]["throughput_per_min"]
        r["vs_linear"] = r["throughput_per_min"] / (base * r["workers"])
        print(f"| {r['workers']} | {r['throughput_per_min']:.1f} | {speedup:.2f}x | {r['vs_linear']:.2f} "
              f"| {r['median_trial_wall_s']:.2f} ({r['median_build_score_s']:.2f} / {r['median_latency_s']:.3f}) "
              f"| {r['overhead_fraction']:.1%} | {r['meter_wait_fraction']:.1%} |")
    busiest = max(results, key=lambda r: r["workers"])
    agree = agreement(Path(busiest["run_dir"]), experiment(Path(busiest["run_dir"]).name, args.trials, out,
                                                           args.space))
    print(f"\nlatency during the {busiest['workers']}-worker study vs the same {agree['artifacts']} artifacts timed "
          f"alone afterwards: median ratio {agree['median_ratio_busy_over_alone']:.3f}, |deviation| median "
          f"{agree['median_abs_deviation']:.1%}, p90 {agree['p90_abs_deviation']:.1%}, "
          f"max {agree['max_abs_deviation']:.1%}; rank correlation (Spearman) {agree['rank_correlation']:.3f}")
    rows = []
    if args.interference:
        rows = interference(Path(busiest["run_dir"]), experiment(Path(busiest["run_dir"]).name, args.trials, out,
                                                                   args.space))
        print("\nthe same artifacts on the latency core, with busy loops on other cores (ratio to alone):")
        for row in rows:
            print(f"  {row['condition']:<24} median {row['median_ratio_to_alone']:.3f} "
                  f"(min {row['min']:.3f}, max {row['max']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "studies": results, "agreement": agree,
                                               "interference": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
