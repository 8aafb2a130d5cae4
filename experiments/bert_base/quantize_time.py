"""Time of a BERT-base precision mix built two ways, side by side in one run.

    python experiments/bert_base/quantize_time.py [--repeats 3]

`file`: each int8 kind through ORT's `quantize_static` / `quantize_dynamic`, file to file (how `tuner` built them
before); `memory`: `tuner.build.quantize.apply_precisions`, which runs the same quantizers on the model in memory.
Both build the same mix of the seeded BERT-base export (static int8, three dynamic kinds and fp32 over its 72
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
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from tuner.build.export import WEIGHTED_OPS, export_onnx, layer_weights, map_layers
from tuner.build.quantize import DYNAMIC_OPTIONS, _BatchReader, apply_precisions, keep_float_inputs
from tuner.precision import KINDS, parse
from tuner.space import quantizable_layers
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
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizers log advice and per-tensor INFO lines
    task = make_task()
    layers = quantizable_layers(task.model)
    with tempfile.TemporaryDirectory(prefix="quantize-time-") as folder:
        tmp = Path(folder)
        export_onnx(task.model, task.example_inputs, tmp / "fp32.onnx")
        nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(task.model, layers))
        node_precision = {nodes[name].name: MIX[i % len(MIX)] for i, name in enumerate(layers)}
        print(f"BERT-base export: {(tmp / 'fp32.onnx').stat().st_size / 1e6:.0f} MB, {len(layers)} layers, "
              f"mix of {', '.join(MIX)}")
        calibration = [[t.numpy() for t in batch] for batch in task.calibration_inputs]
        ranges = tmp / "ranges"
        apply_precisions(tmp / "fp32.onnx", tmp / "memory.onnx", node_precision, calibration, ranges)  # calibrates
        seconds: dict[str, list[float]] = {"file": [], "memory": []}
        for repeat in range(args.repeats):
            for way in ("file", "memory"):
                start = time.perf_counter()
                if way == "file":
                    build_with_files(tmp / "fp32.onnx", tmp / "file.onnx", node_precision, calibration, ranges, tmp)
                else:
                    apply_precisions(tmp / "fp32.onnx", tmp / "memory.onnx", node_precision, calibration, ranges)
                seconds[way].append(time.perf_counter() - start)
                print(f"  repeat {repeat}: {way:6s} {seconds[way][-1]:6.1f} s")
        same = digest(tmp / "file.onnx") == digest(tmp / "memory.onnx")
        file_s, memory_s = statistics.median(seconds["file"]), statistics.median(seconds["memory"])
        print(f"median: file {file_s:.1f} s, memory {memory_s:.1f} s, memory/file {memory_s / file_s:.2f}; "
              f"outputs byte-identical: {same}")


if __name__ == "__main__":
    main()
