"""Would ORT's static quantizer, with other settings, let more layers stay fast? Uniform static int8 (QDQ,
per-channel int8 weights, every Conv/Gemm/MatMul) of one task, built by ORT's own ``quantize_static`` with each
calibration method (MinMax, the one `tuner` uses; Percentile; Entropy) and with symmetric int8 activations, then
scored with the task's metric and timed side by side with fp32 in one process (ratios only):

    python experiments/search/plan/static_options.py tuner.tasks.resnet50:make_task

Prints one row per setting: metric, speedup over fp32, calibration seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from tuner.build.export import export_onnx
from tuner.measure.latency import latency_feeds, measure_latency
from tuner.measure.quality import score
from tuner.taskref import TaskRef

SETTINGS = {
    "minmax (tuner's)": dict(calibrate_method=CalibrationMethod.MinMax),
    "percentile 99.999": dict(calibrate_method=CalibrationMethod.Percentile),
    "entropy": dict(calibrate_method=CalibrationMethod.Entropy),
    "minmax, symmetric int8 activations": dict(calibrate_method=CalibrationMethod.MinMax,
                                               activation_type=QuantType.QInt8,
                                               extra_options={"ActivationSymmetric": True}),
}


class Reader(CalibrationDataReader):
    def __init__(self, names, batches):
        self.feeds = iter([{n: t.numpy() for n, t in zip(names, batch)} for batch in batches])

    def get_next(self):
        return next(self.feeds, None)


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("task")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds, round-robin over the models")
    args = parser.parse_args()
    task = TaskRef(args.task).load()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp, "fp32.onnx")
        export_onnx(task.model, task.example_inputs, fp32)
        names = [i.name for i in session(fp32).get_inputs()]
        models, rows = {"fp32": fp32}, {}
        for label, options in SETTINGS.items():
            out = Path(tmp, f"{len(models)}.onnx")
            start = time.perf_counter()
            quantize_static(str(fp32), str(out), Reader(names, task.calibration_inputs), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                            **{"activation_type": QuantType.QUInt8, **options})
            rows[label] = {"calibration_s": time.perf_counter() - start}
            models[label] = out
        feeds = latency_feeds(task, names, 1)
        sessions = {label: session(path) for label, path in models.items()}
        times: dict[str, list[float]] = {label: [] for label in models}
        for _ in range(args.rounds):
            for label, sess in sessions.items():
                times[label].append(measure_latency(sess, feeds, warmup=3, repeats=20).median_ms)
        fp32_ms = float(np.median(times["fp32"]))
        print(f"| setting | {task.evaluation.metric_name} | speedup over fp32 | calibration + quantization s |")
        print("|---|---|---|---|")
        for label, sess in sessions.items():
            metric = score(sess, task.evaluation)
            speedup = fp32_ms / float(np.median(times[label]))
            extra = f"{rows[label]['calibration_s']:.1f}" if label in rows else "-"
            print(f"| {label} | {metric:.4f} | {speedup:.2f}x | {extra} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
