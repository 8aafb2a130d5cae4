"""Time of a BERT-base precision mix built two ways, side by side in one run.

    python experiments/bert_base/quantize_time.py [--repeats 3]
    python experiments/bert_base/quantize_time.py --mix int8-dynamic-pc --ways memory reused   # uniform per-channel

`file`: each int8 kind through ORT's `quantize_static` / `quantize_dynamic`, file to file (how `tuner` built them
before); `memory`: `tuner.build.quantize.apply_precisions`, which runs the same quantizers on the model in memory,
with no per-channel weight quantized before in the process (what a study's first build of these weights costs);
`reused`: the same right after, the per-channel weights taken from what `memory` quantized (a later trial's build
in the same worker, where its layers' weights are unchanged). All build the same mix of the seeded BERT-base export (static int8, three dynamic kinds and fp32 over its 72
Linear layers, static int8 from ranges calibrated once before), alternating, and the two outputs are compared byte
for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import tempfile
import time
from pathlib import Path

import onnx
from onnxruntime.quantization import (
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from tuner.build.export import WEIGHTED_OPS, export_onnx, layer_weights, map_layers
from tuner.build.layers import quantizable_layers
from tuner.build.quantize import (
    QUANTIZED_WEIGHTS,
    _BatchReader,
    apply_precisions,
    keep_float_inputs,
)
from tuner.build.quantize.dynamic import DYNAMIC_OPTIONS
from tuner.core.precision import KINDS, parse
from tuner.tasks.bert_base import make_task

MIX = ("int8", "int8-dynamic", "int8-dynamic-pc", "int8-dynamic-pc7", "fp32")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def build_with_files(src: Path, dst: Path, node_precision: dict[str, str], calibration: list, ranges: Path,
                     tmp: Path) -> None:
    """Each kind through ORT's `quantize_static` / `quantize_dynamic`, file to file, in the build order of
    `apply_precisions` (its code before the in-memory build; static int8 reads the cached ranges)."""
    by_kind: dict[str, list[str]] = {}
    for node, kind in node_precision.items():
        by_kind.setdefault(kind, []).append(node)
    float_nodes = [n for n, c in node_precision.items() if parse(c)[0].computes_in_float]
    model = onnx.load(str(src))
    for kind in sorted(by_kind, key=lambda k: (parse(k)[0].build_order, k)):
        if kind == "fp32":
            continue
        onnx.save(model, str(tmp / "in.onnx"))
        if kind == "int8":
            cache = ranges / f"{hashlib.sha256((tmp / 'in.onnx').read_bytes()).hexdigest()[:32]}.json"
            quantize_static(tmp / "in.onnx", tmp / "out.onnx", _BatchReader(INPUTS, calibration),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=by_kind[kind],
                            op_types_to_quantize=list(WEIGHTED_OPS), calibration_cache_path=cache)
            model = onnx.load(str(tmp / "out.onnx"))
            keep_float_inputs(model, float_nodes)
            continue
        quantize_dynamic(tmp / "in.onnx", tmp / "out.onnx", weight_type=QuantType.QInt8,
                         per_channel=kind != "int8-dynamic", reduce_range=kind.endswith("pc7"),
                         nodes_to_quantize=by_kind[kind], op_types_to_quantize=list(KINDS[kind].op_types),
                         extra_options=dict(DYNAMIC_OPTIONS))
        model = onnx.load(str(tmp / "out.onnx"))
    onnx.save(model, str(dst))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mix", nargs="+", default=list(MIX), help="kinds given to the layers in turn")
    parser.add_argument("--ways", nargs="+", default=["file", "memory", "reused"], choices=["file", "memory", "reused"])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizers log advice and per-tensor INFO lines
    task = make_task()
    layers = quantizable_layers(task.model)
    with tempfile.TemporaryDirectory(prefix="quantize-time-") as folder:
        tmp = Path(folder)
        export_onnx(task.model, task.example_inputs, tmp / "fp32.onnx")
        nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(task.model, layers))
        node_precision = {nodes[name].name: args.mix[i % len(args.mix)] for i, name in enumerate(layers)}
        print(f"BERT-base export: {(tmp / 'fp32.onnx').stat().st_size / 1e6:.0f} MB, {len(layers)} layers, "
              f"mix of {', '.join(args.mix)}")
        calibration = [[t.numpy() for t in batch] for batch in task.calibration_inputs]
        ranges = tmp / "ranges"
        apply_precisions(tmp / "fp32.onnx", tmp / "memory.onnx", node_precision, calibration, ranges)  # calibrates
        ways = args.ways
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        for repeat in range(args.repeats):
            for way in ways:
                if way == "memory":
                    QUANTIZED_WEIGHTS.clear()
                start = time.perf_counter()
                if way == "file":
                    build_with_files(tmp / "fp32.onnx", tmp / "file.onnx", node_precision, calibration, ranges, tmp)
                else:
                    apply_precisions(tmp / "fp32.onnx", tmp / f"{way}.onnx", node_precision, calibration, ranges)
                seconds[way].append(time.perf_counter() - start)
                print(f"  repeat {repeat}: {way:6s} {seconds[way][-1]:6.1f} s", flush=True)
        same = len({digest(tmp / f"{way}.onnx") for way in ways}) == 1
        median = {way: statistics.median(seconds[way]) for way in ways}
        ratios = [f"{a}/{b} {median[a] / median[b]:.2f}" for a, b in (("memory", "file"), ("reused", "memory"))
                  if a in median and b in median]
        print("median: " + ", ".join(f"{way} {median[way]:.1f} s" for way in ways) + "; " + ", ".join(ratios)
              + f"; outputs byte-identical: {same}")


if __name__ == "__main__":
    main()
