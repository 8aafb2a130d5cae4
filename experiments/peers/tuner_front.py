"""`tuner`'s side: its default study on the model (the experiment file beside this script: auto space, 20 trials),
timed as a user runs it, then its Pareto front copied beside the peers' models (work/<model>/tuner/).

    python experiments/peers/tuner_front.py digits_cnn
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CONFIGS = {"digits_cnn": "digits_cnn.yaml", "minilm": "minilm.yaml", "resnet50": "resnet50.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--runs", type=Path, default=HERE / "work" / "tuner-runs")
    args = parser.parse_args()
    out = args.work / args.model / "tuner"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = HERE / CONFIGS[args.model]
    runs = args.runs.resolve()
    shutil.rmtree(runs / f"peers-{args.model.replace('_', '-')}", ignore_errors=True)  # a fresh study, not a resumed one
    started = time.time()
    log = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(config), "--output-dir", str(runs),
                          "--tracking-uri", f"sqlite:///{runs}/mlflow.db", "--no-progress"],
                         capture_output=True, text=True)
    wall = time.time() - started
    (out / "study.log").write_text(log.stdout + log.stderr)
    if log.returncode:
        sys.exit(f"tuner run failed:\n{log.stderr[-2000:]}")
    run_dir = runs / next(line.split(": ", 1)[1] for line in log.stdout.splitlines()
                          if line.startswith("run directory: ")).rsplit("/", 1)[-1]
    models = []
    with open(run_dir / "pareto.csv") as f:
        for row in csv.DictReader(f):
            target = out / f"trial{row['trial']}.onnx"
            shutil.copy(run_dir / "artifacts" / row["key"] / "model.onnx", target)
            models.append(target.name)
    trials = re.search(r"(\d+) complete, (\d+) failed trials", log.stdout)
    probes = re.search(r"plan: (\d+) probes", log.stdout)
    (out / "run.json").write_text(json.dumps({
        "peer": "tuner", "model": args.model, "status": "ok", "models": models, "wall_s": round(wall, 1),
        "evaluations": int(trials.group(1)) + int(trials.group(2)) if trials else None,
        "probes": int(probes.group(1)) if probes else 0, "run_dir": str(run_dir)}, indent=1))
    print(f"tuner on {args.model}: {len(models)} front model(s) in {wall:.0f} s -> {out}")


if __name__ == "__main__":
    main()
