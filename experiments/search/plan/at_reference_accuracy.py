"""The digits pruning criterion, per benchmark run: the fastest trial at least as accurate as the fastest
reference (uniform int8), as a ratio to it; and the fastest within drops of 0.005 and 0.01, also over it.

    python experiments/search/plan/at_reference_accuracy.py experiments/search/plan/digits_pruning*.jsonl
"""

import json
import sys


def main(paths: list[str]) -> None:
    for path in paths:
        for line in open(path):
            run = json.loads(line)
            rows = [r for r in run["rows"] if r["state"] == "COMPLETE"]
            base = min((r for r in rows if r["reference"]), key=lambda r: r["values"][1])
            accuracy, latency = base["values"]
            as_good = [r for r in rows if r["values"][0] >= accuracy - 1e-12 and r["values"][1] < latency]
            best = min(as_good, key=lambda r: r["values"][1]) if as_good else None

            def within(drop: float) -> float:
                return latency / min(r["values"][1] for r in rows if r["metric_drop"] <= drop + 1e-12)

            print(f"{path.split('/')[-1]} {run['strategy']} seed {run['seed']}: fastest reference {accuracy:.4f} at "
                  f"{latency:.3f} ms; fastest at >= its accuracy: "
                  + (f"{latency / best['values'][1]:.2f}x (trial {best['number']}, {best['stage']})" if best else "none")
                  + f"; within drop 0.005: {within(0.005):.2f}x, 0.01: {within(0.01):.2f}x; wall {run['wall_s']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
