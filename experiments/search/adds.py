"""What a search adds beyond the uniform references, per run of benchmark.py:

    python experiments/search/benchmark.py experiments/minilm/experiment.yaml --strategies default refs-then-tpe \
        --seeds 0 --trials 20 --out minilm.jsonl
    python experiments/search/adds.py minilm.jsonl --drops 0.02 0.005 0.002

Per run: (a) the hypervolume of its feasible trials over that of its feasible references alone (metric up, latency
down, latencies as fractions of the run's own fp32 reference, reference point (fp32's latency, the constraint));
(b) at each constraint, the speedup over fp32 of the fastest feasible trial against that of the fastest feasible
reference; (c) the share of the non-reference trials that are feasible; (d) the largest latency ratio between
neighbouring front points from the fastest feasible reference up to fp32; and the wall time. Speedups are ratios
measured within one run; runs of one file were made side by side on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _points(record: dict, limit: float, references_only: bool = False) -> list[tuple[float, float]]:
    """(latency as a fraction of fp32's, metric drop) of the feasible complete trials."""
    fp32 = _fp32_ms(record)
    return [(r["values"][1] / fp32, r["metric_drop"]) for r in record["rows"]
            if r["state"] == "COMPLETE" and r["metric_drop"] is not None and r["metric_drop"] <= limit
            and (not references_only or r["reference"])]


def _fp32_ms(record: dict) -> float:
    ref = next((r for r in record["rows"] if r["reference"] == "fp32" and r["state"] == "COMPLETE"), None)
    return ref["values"][1] if ref else record["baseline"]["latency_ms"]


def hypervolume(points: list[tuple[float, float]], limit: float) -> float:
    """Area dominated by ``points`` (latency fraction down, drop down) within (1.0, limit)."""
    area, best_drop = 0.0, limit
    for latency, drop in sorted(p for p in points if p[0] < 1.0 or p[1] <= limit):
        if drop < best_drop:
            area += (1.0 - min(latency, 1.0)) * (best_drop - drop)
            best_drop = drop
    return area


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out, best = [], float("inf")
    for latency, drop in sorted(points):
        if drop < best:
            out.append((latency, drop))
            best = drop
    return out


def largest_gap(record: dict, limit: float) -> float | None:
    refs = _points(record, limit, references_only=True)
    if not refs:
        return None
    start = min(latency for latency, _ in refs)
    lat = sorted({latency for latency, _ in front(_points(record, limit)) if start <= latency <= 1.0} | {start, 1.0})
    return max((b / a for a, b in zip(lat, lat[1:])), default=1.0)


def report(record: dict, drops: list[float]) -> list[str]:
    limit = record["max_metric_drop"] if record["max_metric_drop"] is not None else float("inf")
    all_hv = hypervolume(_points(record, limit), limit)
    ref_hv = hypervolume(_points(record, limit, references_only=True), limit)
    sampled = [r for r in record["rows"] if not r["reference"] and r["state"] in ("COMPLETE", "PRUNED")]
    feasible = [r for r in sampled if r["state"] == "COMPLETE" and r["metric_drop"] is not None
                and r["metric_drop"] <= limit]
    stages: dict[str, int] = {}
    for r in record["rows"]:
        stages[r.get("stage") or ("reference" if r["reference"] else "sampler")] = \
            stages.get(r.get("stage") or ("reference" if r["reference"] else "sampler"), 0) + 1
    cells = []
    for drop in drops:
        best = min((lat for lat, _ in _points(record, drop)), default=None)
        ref = min((lat for lat, _ in _points(record, drop, references_only=True)), default=None)
        cells.append(f"{1 / best:.2f}x / {1 / ref:.2f}x" if best and ref else "-")
    gap = largest_gap(record, limit)
    return [record["experiment"], record["strategy"], str(record["seed"]), f"{len(record['rows'])}",
            f"{all_hv / ref_hv:.3f}" if ref_hv else f"{all_hv:.2g} (refs: 0)", *cells,
            f"{len(feasible)}/{len(sampled)}", f"{gap:.2f}x" if gap else "-", f"{record['wall_s']:.0f}",
            ", ".join(f"{k} {v}" for k, v in stages.items())]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--drops", nargs="+", type=float, help="constraints for (b); default: each run's own, "
                        "0.005 and 0.002")
    args = parser.parse_args()
    records = [json.loads(line) for f in args.files for line in Path(f).read_text().splitlines() if line.strip()]
    header = ["experiment", "strategy", "seed", "trials", "HV / refs' HV"]
    drops_of = {id(r): args.drops or [r["max_metric_drop"], 0.005, 0.002] for r in records}
    first = next(iter(drops_of.values()), [])
    header += [f"fastest at drop <= {d:g} (all / refs)" for d in first]
    header += ["sampled feasible", "largest front gap (best ref to fp32)", "wall s", "trials by stage"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for record in records:
        print("| " + " | ".join(report(record, drops_of[id(record)])) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
