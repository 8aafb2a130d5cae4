"""Where a study's trials spent their time: per trial, the build stages, the metric and the latency, and the
share of the trial outside metric and latency (issue 11's goal: at most 25% on BERT-base).

    python experiments/bert_base/overhead.py RUN_DIR [RUN_DIR ...]

Reads the stage times every trial records (the `timings` of its Optuna trial); `tuner run` prints the median
share of all trials at the end of its `median seconds per completed trial` line. ``wall``: from the trial's
start on the driver to its result, build, metric, latency and orchestration included; the overhead is
``wall - accuracy - latency``. Uniform references and sampled trials are summarized apart: a reference is
often the first build of its kind in a worker (static int8 calibrates, per-channel weights are quantized).
Screened-out trials (``screening:``) are listed with their seconds and left out of the shares.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tuner.core.storage import open_study
from tuner.core.vocab import TRIAL_STAGES

STAGES = TRIAL_STAGES[:-1]  # orchestration: the rest of ``wall``


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        study = open_study(run_dir, run_dir.name)
        trials = [t for t in study.trials if "wall" in t.user_attrs.get("timings", {})
                  and (t.state.name == "COMPLETE" or t.user_attrs.get("screened_out"))]
        screened = [t for t in trials if t.user_attrs.get("screened_out")]
        print(f"{run_dir}: {len(trials) - len(screened)} completed trials, {len(screened)} screened out; seconds")
        print(f"{'trial':>5} {'kind':<9} " + " ".join(f"{s:>9}" for s in STAGES) + f" {'wall':>7} {'outside':>8}")
        shares: dict[str, list[float]] = {"reference": [], "sampled": []}
        for trial in trials:
            timings = trial.user_attrs["timings"]
            kind = "reference" if _uniform(trial.user_attrs.get("summary", "")) else "sampled"
            if trial.user_attrs.get("screened_out"):  # not in the shares: stopped before (or without) timing
                kind = "screened" + ("*" if trial.user_attrs.get("screened_before_build") else "")
            outside = (timings["wall"] - timings.get("accuracy", 0.0) - timings.get("latency", 0.0)) / timings["wall"]
            if kind in shares:
                shares[kind].append(outside)
            print(f"{trial.number:>5} {kind:<9} " + " ".join(f"{timings.get(s, 0.0):9.2f}" for s in STAGES)
                  + f" {timings['wall']:7.2f} {outside:8.0%}")
        if screened:
            walls = [t.user_attrs["timings"]["wall"] for t in screened]
            print(f"screened out ({len(screened)}; * = as the pruned fp32 model, before export): median "
                  f"{statistics.median(walls):.1f} s ({min(walls):.1f}-{max(walls):.1f} s) per trial")
        for kind, values in shares.items():
            if values:
                print(f"median share outside metric and latency, {kind} trials ({len(values)}): "
                      f"{statistics.median(values):.0%} ({min(values):.0%}-{max(values):.0%})")
        print()


def _uniform(summary: str) -> bool:
    """A reference: one precision for every layer, nothing pruned (``int8 72; unpruned; opt=all``)."""
    parts = summary.split("; ")
    return len(parts) > 1 and len(parts[0].split()) == 2 and parts[1] == "unpruned"


if __name__ == "__main__":
    main()
