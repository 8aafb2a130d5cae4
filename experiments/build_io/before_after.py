"""One change of the build code measured side by side: the same candidates built by the evaluator of two
checkouts, each in its own process, alternating, on one machine in one run.

    python experiments/build_io/before_after.py --before REV [--after WORKTREE] [--rounds 2]
        [--experiment experiments/bert_base/experiment.yaml] [--set io|mix|int4]

``--before``: a git revision, checked out in a temporary worktree; ``--after``: a checkout (default: this one).
Every process loads the experiment's task, then builds and scores on ``--samples`` evaluation samples (not
timed: latency is not what changes) unpruned candidates. ``--set io``: fp32, fp32 with transformer fusions,
uniform int8-dynamic, and int8-dynamic with the fusions. ``--set mix``: uniform static int8 twice (calibrating,
then from the ranges it cached) and a mix of every int8 kind and fp32 over the layers in turn twice (its
per-channel weights quantized, then reused), a precision-only study's builds. ``--set int4``: uniform static
int8 (calibrating), then three mixes of every int8 kind, fp32 and int4-b32 over the layers in turn, each
starting the turn at another kind (so another set of 4-bit layers). The
pruned fp32 export is built once, before the rounds, and shared by every process (what a study's workers do),
so the times are those of what follows the export: fusion, quantization, the run settings stamped into the
file, the kernel check, opening the model to score it, scoring. Prints per candidate the median build seconds of each checkout, their ratio, and
whether both wrote the same bytes (they differ only if the change meant them to).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WORKER = r"""
import hashlib, json, shutil, sys, time
from pathlib import Path
checkout, experiment, root, export_root, SAMPLES, SET = sys.argv[1:5] + [int(sys.argv[5]), sys.argv[6]]
sys.path.insert(0, checkout)
from tuner.core.candidate import Candidate
from tuner.evaluate import Evaluator
from tuner.experiment import load_experiment
from tuner.core.records import Fidelity
exp = load_experiment(Path(checkout) / experiment)
ev = Evaluator(exp.task_ref(), exp.eval_settings(), root, export_root=export_root)
fusions = ("gelu", "skip_layer_norm")
dynamic = tuple((layer, "int8-dynamic") for layer in ev.layers)
static = tuple((layer, "int8") for layer in ev.layers)
kinds = ("int8", "int8-dynamic", "int8-dynamic-pc", "int8-dynamic-pc7", "fp32")
mix = tuple((layer, kinds[i % len(kinds)]) for i, layer in enumerate(ev.layers))
six = kinds + ("int4-b32",)
def with_int4(shift):
    return tuple((layer, six[(i + shift) % len(six)]) for i, layer in enumerate(ev.layers))
candidates = {
    "io": {"fp32": Candidate(), "fp32 + fusions": Candidate(fusions=fusions),
           "int8-dynamic": Candidate(precision=dynamic),
           "int8-dynamic + fusions": Candidate(precision=dynamic, fusions=fusions)},
    "mix": {"int8, calibrating": Candidate(precision=static), "int8, cached ranges": Candidate(precision=static),
            "mix, first": Candidate(precision=mix), "mix, weights reused": Candidate(precision=mix)},
    "int4": {"int8, calibrating": Candidate(precision=static), "mix with int4, a": Candidate(precision=with_int4(0)),
             "mix with int4, b": Candidate(precision=with_int4(1)),
             "mix with int4, c": Candidate(precision=with_int4(2))},
}[SET]
out = {}
for name, candidate in candidates.items():
    start = time.perf_counter()
    result = ev.build_and_score(candidate, Fidelity(samples=SAMPLES, timed=False))
    seconds = time.perf_counter() - start
    if result.error:
        raise SystemExit(f"{name}: {result.error}")
    data = (Path(result.artifact_dir) / "model.onnx").read_bytes()
    out[name] = {"s": seconds, "stages": result.timings, "sha256": hashlib.sha256(data).hexdigest()}
    shutil.rmtree(result.artifact_dir)  # a candidate listed twice is built twice (ranges, weights kept)
print("RESULT " + json.dumps(out))
"""


def run_worker(checkout: Path, experiment: str, export_root: Path, samples: int, candidates: str) -> dict:
    for ranges in export_root.glob("*/calibration"):  # every process calibrates its first static build itself
        shutil.rmtree(ranges)
    with tempfile.TemporaryDirectory(prefix="build-io-") as root:
        proc = subprocess.run([sys.executable, "-c", WORKER, str(checkout), experiment, root, str(export_root),
                               str(samples), candidates],
                              capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"build worker for {checkout} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the build code before the change")
    parser.add_argument("--after", default=str(REPO), help="checkout of the build code after it (default: this)")
    parser.add_argument("--experiment", default="experiments/bert_base/experiment.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8, help="evaluation samples each model is scored on")
    parser.add_argument("--set", default="io", choices=["io", "mix", "int4"], help="which candidates (see above)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="build-io-before-") as before_dir, \
            tempfile.TemporaryDirectory(prefix="build-io-exports-") as export_root:
        # the export is built once, here, so both checkouts build from the same bytes
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", before_dir, args.before],
                       check=True)
        try:
            checkouts = {"before": Path(before_dir), "after": Path(args.after)}
            run_worker(checkouts["after"], args.experiment, Path(export_root), args.samples, "io")  # the export, untimed
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for round_ in range(args.rounds):
                order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
                for which in order:
                    runs[which].append(run_worker(checkouts[which], args.experiment, Path(export_root), args.samples,
                                                  args.set))
                    print(f"round {round_ + 1}: {which} done", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", before_dir], check=False)
    print(f"\n{args.experiment}: before = {args.before}, after = {args.after}; median of {args.rounds} builds, scored on {args.samples} samples, s")
    print(f"{'candidate':<26} {'before':>8} {'after':>8} {'after/before':>13}  same bytes")
    for name in runs["before"][0]:
        before = statistics.median(r[name]["s"] for r in runs["before"])
        after = statistics.median(r[name]["s"] for r in runs["after"])
        same = runs["before"][0][name]["sha256"] == runs["after"][0][name]["sha256"]
        print(f"{name:<26} {before:8.2f} {after:8.2f} {after / before:12.2f}x  {same}")
    for which in ("before", "after"):
        stages = {name: {k: round(statistics.median(r[name]["stages"].get(k, 0.0) for r in runs[which]), 2)
                         for k in runs[which][0][name]["stages"]} for name in runs[which][0]}
        print(f"{which} stages: {json.dumps(stages)}")


if __name__ == "__main__":
    main()
