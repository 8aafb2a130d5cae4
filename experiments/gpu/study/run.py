"""Run a GPU study (`runtime: torch`, in this process) and write what it found beside its log: every completed
trial (references, plan, sampler) with its metric, latency, speedup over fp32 eager PyTorch, peak GPU memory and
choices; the front; and, for the fastest feasible point, its share of the card's dense bf16 peak.

    python experiments/gpu/study/run.py experiments/gpu/study/resnet50.yaml --out results/resnet50.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import tuner  # noqa: E402
from tuner.core.records import StudyMeta, TrialMeta  # noqa: E402
from tuner.core.storage import load_finished_study  # noqa: E402
from tuner.experiment import load_experiment  # noqa: E402

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, the vendor's datasheets (SXM)


def model_flops_and_default_eager(experiment) -> tuple[float, float | None]:
    """FLOPs of one latency batch of the fp32 model (torch's counter), and that model's eager latency with PyTorch's
    default settings on the GPU (cuDNN convolutions in TF32; the study's baseline has TF32 off)."""
    task = experiment.task_ref().load()
    inputs = tuple(x[:1].repeat(experiment.latency.batch_size, *[1] * (x.dim() - 1)) for x in task.example_inputs)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        task.model(*inputs)
    if not torch.cuda.is_available():
        return float(counter.get_total_flops()), None
    from tuner.measure.torch_latency import time_callable

    model = task.model.cuda()
    timing = time_callable(model, [x.cuda() for x in inputs], experiment.latency.warmup, experiment.latency.repeats)
    return float(counter.get_total_flops()), timing.latency.median_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment")
    parser.add_argument("--out", required=True)
    parser.add_argument("--output-dir", default="/tmp/gpu-runs")
    parser.add_argument("--trials", type=int)
    args = parser.parse_args()
    experiment = load_experiment(args.experiment)
    started = time.perf_counter()
    try:
        tuner.run(args.experiment, trials=args.trials, output_dir=args.output_dir, in_process=True, progress=False,
                  tracking_uri=f"sqlite:///{args.output_dir}/mlflow.db")
    except KeyboardInterrupt:
        print("stopped: the trials finished so far are summarized")
    wall = time.perf_counter() - started
    study = load_finished_study(experiment.name, args.output_dir)
    meta = StudyMeta.load(study)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        info = TrialMeta.of(trial)
        row = {"trial": trial.number, "state": trial.state.name, "stage": info.origin, "reference": info.reference,
               "summary": info.summary, "fail": (info.fail_reason or "")[:300]}
        if trial.values:
            row.update(metric=trial.values[0], latency_ms=trial.values[1],
                       speedup=meta.baseline_latency_ms / trial.values[1], drop=info.metric_drop,
                       gpu_peak_mb=info.extra_metrics.get("gpu_peak_mb"), timings=dict(info.timings))
        rows.append(row)
        print(json.dumps(row))
    feasible = [r for r in rows if r.get("drop") is not None and r["drop"] <= meta.max_metric_drop]
    best = min(feasible, key=lambda r: r["latency_ms"]) if feasible else None
    flops, default_eager_ms = model_flops_and_default_eager(experiment)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in card), None)
    summary = {"experiment": experiment.name, "card": card, "torch": torch.__version__, "wall_s": wall,
               "baseline": {"metric": meta.baseline_metric, "latency_ms": meta.baseline_latency_ms},
               "gflops_per_batch": flops / 1e9, "best_feasible": best, "default_eager_ms": default_eager_ms,
               "trials": rows}
    if best and default_eager_ms:
        summary["best_speedup_over_default_eager"] = default_eager_ms / best["latency_ms"]
    if best and peak:
        tflops = flops / (best["latency_ms"] / 1e3) / 1e12
        summary["best_tflops"], summary["best_share_of_bf16_peak"] = tflops, tflops / peak
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}))
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
