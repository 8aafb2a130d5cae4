"""Static int8 with and without the calibration cache, side by side in one run, on the built-in examples.

For each example: export it once, draw K random mixes of int8/fp32 over its layers (a trial's quantize stage
as the study runs it), and build each mix twice, interleaved: calibrating per build (what every trial did
before), and reading the ranges calibrated once for that export. Prints seconds per build and their ratio,
and checks that both builds of a mix are the same model (every initializer equal).

    .venv/bin/python experiments/reuse/calibration_reuse.py [digits_cnn minilm resnet50 bert_base] [--mixes K]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tuner.build.export import export_onnx, layer_weights, map_layers
from tuner.build.layers import quantizable_layers
from tuner.build.quantize import apply_precisions

TASKS = {"digits_cnn": "tuner.tasks.digits_cnn", "minilm": "tuner.tasks.minilm", "resnet50": "tuner.tasks.resnet50",
         "bert_base": "tuner.tasks.bert_base"}


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def bench(name: str, mixes: int, seed: int = 0) -> dict:
    task = importlib.import_module(TASKS[name]).make_task()
    tmp = Path(tempfile.mkdtemp(prefix=f"reuse-{name}-"))
    export_onnx(task.model, task.example_inputs, tmp / "fp32.onnx")
    layers = quantizable_layers(task.model)
    nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(task.model, layers), allow_missing=True)
    calibration = [[t.numpy() for t in batch] for batch in task.calibration_inputs]
    rng = np.random.default_rng(seed)
    per_build, cached, same = [], [], 0
    for i in range(mixes):
        mix = {node.name: "int8" if rng.random() < 0.6 else "fp32" for node in nodes.values()}
        start = time.perf_counter()
        apply_precisions(tmp / "fp32.onnx", tmp / "fresh.onnx", mix, calibration)
        per_build.append(time.perf_counter() - start)
        start = time.perf_counter()
        apply_precisions(tmp / "fp32.onnx", tmp / "cached.onnx", mix, calibration, calibration_cache=tmp / "ranges")
        cached.append(time.perf_counter() - start)
        a, b = initializers(tmp / "fresh.onnx"), initializers(tmp / "cached.onnx")
        same += a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # The first cached build calibrates (and fills the cache); the others read it.
    row = {"example": name, "layers": len(nodes), "mixes": mixes,
           "calibrate_each_s": statistics.median(per_build), "cache_fill_s": cached[0],
           "cached_s": statistics.median(cached[1:]), "identical": f"{same}/{mixes}"}
    row["ratio"] = row["cached_s"] / row["calibrate_each_s"]
    return row


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("examples", nargs="*", default=list(TASKS))
    parser.add_argument("--mixes", type=int, default=4)
    args = parser.parse_args(argv)
    print("| example | layers | mixes | quantize, calibrating each build (s) | first cached build (fills it) (s) "
          "| quantize, ranges from the cache (s) | cached / per-build | same model |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.examples:
        r = bench(name, args.mixes)
        print(f"| {r['example']} | {r['layers']} | {r['mixes']} | {r['calibrate_each_s']:.2f} | {r['cache_fill_s']:.2f} "
              f"| {r['cached_s']:.2f} | {r['ratio']:.2f} | {r['identical']} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
