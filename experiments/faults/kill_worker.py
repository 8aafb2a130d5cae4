"""A Ray build worker killed (SIGKILL) in the middle of a real-size build, once: the trial runs again on a fresh
worker, the study finishes, and no temporary model files are left behind (run directory, the workers' node-local
scratch, the system temporary folder).

    python experiments/faults/kill_worker.py [--out experiments/faults/kill_worker.txt]

The model is the BERT-base-size example (110M parameters, `tuner.tasks.bert_base`); the space is per-channel
dynamic int8 or fp32 per layer (references fp32 and uniform int8, then one sampled trial). A watcher kills the
worker once, in the first build after the fp32 reference trial completed (uniform int8: its build folder
holds the model being quantized).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tuner  # noqa: E402
from tuner.core.records import StudyMeta, TrialMeta  # noqa: E402
from tuner.core.storage import load_finished_study  # noqa: E402

SCRATCH = Path(tempfile.gettempdir()) / "tuner-scratch"


def building_worker(since: float) -> tuple[int, Path] | None:
    """A worker (pid, its build folder) writing a quantized model right now."""
    for build in SCRATCH.glob("*/worker-*-*/.*"):
        if build.is_dir() and build.stat().st_mtime >= since and any(build.glob("*.onnx")):
            return int(build.parent.name.split("-")[1]), build
    return None


def armed(journal: Path) -> bool:
    """The fp32 reference trial is complete: the next build quantizes (uniform per-channel int8)."""
    return journal.is_file() and b'"state":1' in journal.read_bytes()  # a trial set COMPLETE


def watch(since: float, journal: Path, killed: list, stop: threading.Event) -> None:
    while not stop.is_set() and not armed(journal):
        time.sleep(0.2)
    since = time.time()
    while not stop.is_set() and not killed:
        found = building_worker(since)
        if found is not None:
            pid, build = found
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, build, time.strftime("%H:%M:%S")))
            return
        time.sleep(0.05)


def leftovers(run_dir: Path, uid: str, tmp_before: set[str]) -> list[str]:
    left = [str(p) for p in (run_dir / "artifacts").glob(".*")]
    left += [str(p) for p in (run_dir / "artifacts").glob("*/.*.tmp")]
    left += [str(p) for p in (SCRATCH / uid).glob("worker-*")]
    left += [str(p) for p in (SCRATCH / uid / "_exports").glob(".*")]
    left += [str(Path(tempfile.gettempdir()) / n) for n in set(os.listdir(tempfile.gettempdir())) - tmp_before
             if n.startswith("ort.quant")]
    return sorted(left)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="kill-worker-"))
    (work / "space.yaml").write_text("layers:\n  - match: 're:.*'\n    precision: [fp32, int8-dynamic-pc]\n")
    (work / "experiment.yaml").write_text(textwrap.dedent("""
        name: kill-worker
        task: tuner.tasks.bert_base:make_task
        search_space: space.yaml
        trials: 3
        seed: 0
        max_metric_drop: 0.01
        seeding: {seeds: 0}
        latency: {threads: 1, batch_size: 1, warmup: 3, repeats: 10}
    """))
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    killed: list = []
    stop = threading.Event()
    started = time.time()
    journal = work / "runs" / "kill-worker" / "optuna.journal"
    watcher = threading.Thread(target=watch, args=(started, journal, killed, stop), daemon=True)
    watcher.start()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    result = tuner.run(work / "experiment.yaml", output_dir=work / "runs", tracking_uri=f"sqlite:///{work}/mlflow.db",
                       workers=1, progress=False, log=log)
    stop.set()
    study = load_finished_study("kill-worker", work / "runs")
    uid = StudyMeta.load(study).uid
    deaths = {t.number: TrialMeta.of(t).worker_deaths for t in study.trials if TrialMeta.of(t).worker_deaths}
    left = leftovers(work / "runs" / "kill-worker", uid, tmp_before)
    how = (f"pid {killed[0][0]} at {killed[0][2]}, while it wrote {killed[0][1].name}" if killed
           else "never (no build seen)")
    report = [
        f"worker killed: {how}",
        f"trials: {result.n_complete} complete, {result.n_failed} failed, of 3; worker deaths by trial: {deaths}",
        f"wall: {result.wall_s:.0f} s",
        f"left behind: {left if left else 'nothing'}",
    ]
    print("\n".join(report))
    if args.out:
        args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
