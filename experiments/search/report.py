"""Tables from benchmark.py's JSON lines: hypervolume against trials and wall seconds, per strategy.

    python experiments/search/report.py experiments/search/digits.jsonl [--absolute [MS]] [--sampled-only] [--runs]

Hypervolume: metric up, latency down. Latency is each run's own divided by that run's fp32 baseline (runs
happen at different times on a noisy machine; the ratio is what one run measures side by side). Reference
point: (fp32 latency, the metric constraint). Reference hypervolume: the union of every run's feasible points.
The sensitivity pass of ``seeded`` runs is counted as trials (its seconds divided by the run's median
seconds per trial) and as seconds. ``--runs`` also lists, per run, its references, its seeds and its fastest
sampled trials within the constraint and within half its allowed drop, in milliseconds as measured (side by side within the run).
Lines written by retime.py hold re-timed latencies for the trials that were ever on their run's front; the
others are left out.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

from tuner.results.front import hypervolume

CHECKPOINTS = (10, 25, 50, 100, 200, 400)


# Latency scale: each run's own fp32 baseline (runs made at different times), or, with --absolute, one scale
# for all: milliseconds, against the median of the runs' baselines (runs made side by side, where one run's
# baseline can be a noisy single measurement that would make all of its points look fast or slow); a number
# after --absolute sets that scale (one run's baseline known to be disturbed would otherwise move the median).
ABSOLUTE_MS: float | None = None
# --sampled-only: leave the reference trials out (where one run's references were timed while the machine was
# disturbed, or to see what the sampler itself added)
SAMPLED_ONLY = False


def points(run: dict, upto: int | None = None, before_s: float | None = None) -> list[tuple[float, float]]:
    base = {"latency_ms": ABSOLUTE_MS} if ABSOLUTE_MS else run["baseline"]
    sign = -1 if run["maximize"] else 1
    out = []
    for row in run["rows"][:upto]:
        if row["state"] != "COMPLETE" or row["metric_drop"] is None or row["metric_drop"] > run["max_metric_drop"]:
            continue
        if before_s is not None and (row["completed_at"] or 0) > before_s:
            continue
        if SAMPLED_ONLY and row["reference"]:
            continue
        if row.get("retimed") is False:  # re-timed lines (retime.py): only the trials that were ever on a front
            continue
        metric, latency = row["values"]
        out.append((latency / base["latency_ms"], sign * metric))
    return out


def reference_point(run: dict) -> tuple[float, float]:
    sign = -1 if run["maximize"] else 1
    threshold = run["baseline"]["metric"] - run["max_metric_drop"] * (1 if run["maximize"] else -1)
    return 1.0, sign * threshold


def trial_seconds(run: dict) -> float:
    times = sorted(r["completed_at"] for r in run["rows"] if r["completed_at"] is not None)
    median = statistics.median(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else 0.0
    return median or 1.0  # (a run without completion times counts its pass as seconds only)


def timed(run: dict) -> bool:
    """Whether the run's trials have completion times (a run killed before recording them has none)."""
    return any(r["completed_at"] for r in run["rows"])


def list_runs(runs: list[dict]) -> None:
    for run in runs:
        done = [r for r in run["rows"] if r["state"] == "COMPLETE" and r["values"]]
        wall = "?" if run["wall_s"] is None else f"{run['wall_s']:.0f}"
        print(f"\n## {run['strategy']} seed {run['seed']}: {len(done)} complete in {wall} s, fp32 baseline "
              f"{run['baseline']['latency_ms']:.2f} ms; sensitivity pass {run['sensitivity_probes']} probes, "
              f"{run['sensitivity_s']:.0f} s ({run['sensitivity_s'] / trial_seconds(run):.1f} trials)")
        for r in done:
            if r["reference"] or r["seed"]:
                print(f"  trial {r['number']:3d}  metric {r['values'][0]:.4f}  {r['values'][1]:8.2f} ms  "
                      f"{r['reference'] or 'seed, ' + r['seed']}")
        sampled = [r for r in done if not r["reference"] and not r["seed"]]
        limit = run["baseline"]["metric"] - run["max_metric_drop"] if run["maximize"] else None
        if limit is None:
            continue
        feasible = [r for r in sampled if r["values"][0] >= limit]
        print(f"  sampled: {len(sampled)}, feasible {len(feasible)}")
        for bar in (limit, limit + run["max_metric_drop"] / 2):  # the constraint, and half its allowed drop
            above = [r for r in sampled if r["values"][0] >= bar]
            if above:
                best = min(above, key=lambda r: r["values"][1])
                print(f"  fastest sampled at metric >= {bar:.4f}: trial {best['number']}, {best['values'][0]:.4f}, "
                      f"{best['values'][1]:.2f} ms")


def main() -> int:
    global ABSOLUTE_MS, SAMPLED_ONLY
    runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    args = sys.argv[2:]
    if runs[0].get("retimed"):
        done = runs[0]["retimed"]
        print(f"# latencies re-timed side by side (retime.py: {done['models']} models, {done['rounds']} rounds x "
              f"{done['repeats']} runs): each run's trials that were ever on its front")
    if "--sampled-only" in args:
        SAMPLED_ONLY = True
        print("# reference trials left out: the samplers' own trials only")
    if "--absolute" in args:
        given = [a for a in args[args.index("--absolute") + 1:][:1] if not a.startswith("--")]
        if given:
            ABSOLUTE_MS = float(given[0])
            print(f"# latency in ms against a given fp32 latency, {ABSOLUTE_MS:.3f} ms")
        else:
            ABSOLUTE_MS = statistics.median(run["baseline"]["latency_ms"] for run in runs)
            print(f"# latency in ms against the median fp32 baseline of the runs, {ABSOLUTE_MS:.3f} ms")
    ref = reference_point(runs[0])
    union = [p for run in runs for p in points(run)]
    ref_hv = hypervolume(union, ref)
    long_random = [r for r in runs if r["strategy"] == "random" and len(r["rows"]) >= 400]
    target, how = None, ""
    if long_random:
        target, how = hypervolume(points(long_random[0], 400), ref), "one 400-trial run"
    else:  # random draws are independent: several random runs together are one longer random run
        random_runs = [r for r in runs if r["strategy"] == "random"]
        pooled = [p for r in random_runs for p in points(r)]
        if sum(len(r["rows"]) for r in random_runs) >= 400:
            target = hypervolume(pooled, ref)
            how = f"{len(random_runs)} runs pooled, {sum(len(r['rows']) for r in random_runs)} trials"
    print(f"# {runs[0]['experiment']}: {len(runs)} runs; reference hypervolume (union of all runs) {ref_hv:.5f}"
          + (f"; random's 400-trial hypervolume ({how}) {target:.5f} ({target / ref_hv:.3f} of the reference)"
             if target else ""))
    by_strategy: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_strategy[run["strategy"]].append(run)

    last = max(len(r["rows"]) for r in runs)
    checkpoints = [k for k in CHECKPOINTS if k <= last]
    per_seed_at = 100 if last >= 100 else 50
    header = "| strategy | seeds | sensitivity (trials-equivalent, s) | " + " | ".join(
        f"HV@{k}" for k in checkpoints) + f" | HV@{per_seed_at} per seed | trials to 0.95 ref | trials to random-400 |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for strategy, group in by_strategy.items():
        cells, to95, to_target, extra = defaultdict(list), [], [], []
        for run in group:
            equivalent = run["sensitivity_s"] / trial_seconds(run)
            extra.append((equivalent, run["sensitivity_s"]))
            n = len(run["rows"])
            for k in checkpoints:
                if k <= n:
                    cells[k].append(hypervolume(points(run, k), ref) / ref_hv)
            hit = next((k for k in range(1, n + 1) if hypervolume(points(run, k), ref) >= 0.95 * ref_hv), None)
            to95.append(None if hit is None else hit + equivalent)
            if target:
                hit = next((k for k in range(1, n + 1) if hypervolume(points(run, k), ref) >= target), None)
                to_target.append(None if hit is None else hit + equivalent)

        def fmt(values):
            got = [v for v in values if v is not None]
            return "-" if not got else f"{statistics.mean(got):.0f}" + (f" ({len(got)}/{len(values)})"
                                                                         if len(got) < len(values) else "")
        sens = f"{statistics.mean(e for e, _ in extra):.1f}, {statistics.mean(s for _, s in extra):.0f}"
        per_seed = " ".join(f"{v:.2f}" for v in cells[per_seed_at]) if per_seed_at in cells else ""
        print(f"| {strategy} | {len(group)} | {sens} | " + " | ".join(
            f"{statistics.mean(cells[k]):.3f}" if cells[k] else "" for k in checkpoints)
            + f" | {per_seed} | {fmt(to95)} | {fmt(to_target) if target else 'n/a'} |")

    # wall-time checkpoints: doubling from 60 s, the last four within the shortest run
    with_times = [run for run in runs if timed(run)]
    if len(with_times) < len(runs):
        print(f"\n# {len(runs) - len(with_times)} run(s) without completion times: left out of the wall-time table")
    shortest = min(max((r["completed_at"] or 0) for r in run["rows"]) for run in with_times)
    seconds_at = [60 * 2 ** i for i in range(20) if 60 * 2 ** i <= max(shortest, 480)][-4:]
    print("\n| strategy | " + " | ".join(f"HV@{s}s" for s in seconds_at) + " |")
    print("|---|---|---|---|---|")
    for strategy, group in by_strategy.items():
        group = [run for run in group if timed(run)]
        if not group:
            continue
        row = []
        for seconds in seconds_at:
            row.append(statistics.mean(hypervolume(points(run, before_s=seconds), ref) / ref_hv for run in group))
        print(f"| {strategy} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    if "--runs" in args:
        list_runs(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
