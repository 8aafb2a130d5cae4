"""What the two-look sensitivity pass costs and changes against one look at a fixed subset.

    python experiments/sensitivity_modes/pass_cost.py experiments/minilm/broad/experiment.yaml --groups 12

Every probe of the experiment's space (the first ``--groups`` layer groups, every precision choice; pruning
probes too where the space prunes) is run twice, side by side in one process and alternating which goes first:

- ``one look``: scored on ``--old-samples`` evaluation samples (128: what the pass did before);
- ``two looks``: scored on ``--samples`` (32: the pass's default now), and again on the whole set where the
  standard error is above the target the study's constraint sets (``tuner.sensitivity.target_stderr``).

Each runs on its own executor with its own artifact folder, so neither reuses the other's build. Printed: the
seconds each spent, their ratio, and how far the two drops lie apart (in target standard errors, and as a rank
correlation per choice). Metric only: the ratio of seconds is what compares; their level depends on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tuner.core.candidate import Candidate
from tuner.core.records import Fidelity
from tuner.executors import InProcessExecutor
from tuner.experiment import load_experiment
from tuner.search.latency_check import spearman
from tuner.search.sensitivity import (
    layer_groups,
    probes,
    run_sensitivity,
    target_stderr,
)
from tuner.search.setup import prepare


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment")
    parser.add_argument("--groups", type=int, default=None, help="the first N layer groups only (default: all)")
    parser.add_argument("--samples", type=int, default=32, help="first look of the two-look pass")
    parser.add_argument("--old-samples", type=int, default=128, help="the one-look pass's subset")
    args = parser.parse_args()

    experiment = load_experiment(args.experiment)
    task, space = prepare(experiment, log=lambda line: print(line, file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="pass-cost-"))
    executors = {mode: InProcessExecutor(experiment.task_ref(), experiment.eval_settings(), work / mode, task=task)
                 for mode in ("one look", "two looks")}
    maximize = task.evaluation.direction == "maximize"
    executors["one look"].submit("fp32", Candidate(), Fidelity(timed=False))
    ((_, fp32),) = executors["one look"].results()
    groups = list(layer_groups(space, experiment.seeding.max_groups))[:args.groups]
    todo = [p for p in probes(space, "one_in", experiment.seeding.max_groups)
            if p.kind != "precision" or p.group in groups]
    target = target_stderr(experiment.max_metric_drop, len({(p.kind, p.group) for p in todo}))
    print(f"# {experiment.name}: {len(todo)} probes; fp32 {task.evaluation.metric_name} {fp32.metric:.4f}; "
          f"constraint: drop <= {experiment.max_metric_drop}; target std. error {target:.2g}", flush=True)

    looks = {"one look": (args.old_samples, None), "two looks": (args.samples, target)}
    rows: dict[str, dict[str, object]] = {mode: {} for mode in looks}
    seconds = {mode: 0.0 for mode in looks}
    quiet = lambda line: None  # noqa: E731
    for i, probe in enumerate(todo):
        for mode in (list(looks) if i % 2 == 0 else list(reversed(looks))):
            samples, target_for_mode = looks[mode]
            started = time.perf_counter()
            (row,) = run_sensitivity(executors[mode], [probe], fp32.metric, maximize, samples,
                                     work / f"{mode}.jsonl".replace(" ", "_"), quiet, target_stderr=target_for_mode)
            seconds[mode] += time.perf_counter() - started
            rows[mode][probe.id] = row
        old, new = rows["one look"][probe.id], rows["two looks"][probe.id]
        print(f"{probe.id:70s} one look {old.drop:+.6f} ±{old.stderr or 0:.6f} {old.seconds:6.1f} s | "
              f"two looks {new.drop:+.6f} ±{new.stderr or 0:.6f} {'whole set' if new.whole_set else 'subset':9s} "
              f"{new.seconds:6.1f} s", flush=True)

    for executor in executors.values():
        executor.close()
    ok = [p.id for p in todo if rows["one look"][p.id].drop is not None and rows["two looks"][p.id].drop is not None]
    apart = sorted(abs(rows["one look"][i].drop - rows["two looks"][i].drop) / target for i in ok)
    whole = sum(rows["two looks"][i].whole_set for i in ok)
    print(f"# seconds: one look ({args.old_samples} samples) {seconds['one look']:.0f}, two looks ({args.samples} "
          f"samples, then the whole set for {whole} of {len(ok)}) {seconds['two looks']:.0f}; "
          f"two/one = {seconds['two looks'] / seconds['one look']:.2f}")
    print(f"# |drop, two looks - drop, one look| in target std. errors: median {apart[len(apart) // 2]:.3f}, "
          f"max {apart[-1]:.3f}")
    for choice in sorted({p.choice for p in todo if p.kind == "precision"}):
        ids = [p.id for p in todo if p.choice == choice and p.id in ok]
        if len(ids) > 2:
            rho = spearman([rows["one look"][i].drop for i in ids], [rows["two looks"][i].drop for i in ids])
            print(f"# {choice}: rank correlation of the two looks' drops over {len(ids)} groups {rho:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
