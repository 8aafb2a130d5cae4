"""The two exporters on the BERT-base encoder, side by side in one run: what a pruned trial pays to export, and
what the exported model then costs to quantize and to run.

    python experiments/bert_base/export_time.py [--repeats 2] [--rounds 5]
    python experiments/bert_base/export_time.py --mixes 4    # whole builds of sampled pruned mixes instead

Each repeat prunes the seeded BERT-base (half of the 24 head and FFN groups by 0.25, as a sampled trial would),
then, alternating, exports it with each exporter (`dynamo`: torch.export; `torchscript`: the tracer), maps its
72 Linear layers to their nodes, and quantizes it to uniform int8-dynamic in memory
(`tuner.build.quantize.apply_precisions`). Afterwards the fp32 and int8 models of both exporters are timed
round-robin in one process (1 thread, batch 1, as the study times them) and their embeddings compared with
torch's.

``--mixes N``: N candidates drawn as a sampled trial would be (each Linear fp32, static int8, int8-dynamic, -pc or
-pc7; half of the groups pruned by 0.125-0.5), each built whole by a study's evaluator (prune, export, layer map,
calibration of its new export, quantization, kernel check) with each exporter, in alternating order, the
per-channel weights a worker keeps cleared before each build (every build pays what a trial's first build does).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from tuner.build.export import export_onnx, layer_weights, map_layers
from tuner.build.layers import quantizable_layers
from tuner.build.prune import prune, pruning_groups
from tuner.build.quantize import QUANTIZED_WEIGHTS, apply_precisions
from tuner.core.candidate import Candidate
from tuner.evaluate import Evaluator
from tuner.experiment import EvalSettings
from tuner.measure.latency import latency_feeds
from tuner.measure.quality import session_outputs
from tuner.measure.runtime import load_artifact
from tuner.taskref import TaskRef
from tuner.tasks.bert_base import make_task

EXPORTERS = ("dynamo", "torchscript")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


MIX_KINDS = ("fp32", "int8", "int8-dynamic", "int8-dynamic-pc", "int8-dynamic-pc7")


def whole_builds(task, layers: list[str], groups: list, n: int) -> None:
    """Sampled pruned mixes, each built whole with both exporters (alternating which goes first)."""
    rng = np.random.default_rng(0)
    ref = TaskRef("tuner.tasks.bert_base:make_task", {}, ".")
    tmp = Path(tempfile.mkdtemp(prefix="export-mixes-"))
    stages = ("prune", "export", "quantize", "verify_kernels")
    totals: dict[str, list[float]] = {e: [] for e in EXPORTERS}
    for i in range(n):
        precision = tuple((layer, str(rng.choice(MIX_KINDS))) for layer in layers)
        pruned = rng.choice(len(groups), size=len(groups) // 2, replace=False)
        candidate = Candidate(precision=precision,
                              prune=tuple((groups[g].name, float(rng.choice([0.125, 0.25, 0.375, 0.5])))
                                          for g in sorted(pruned)))
        for exporter in EXPORTERS if i % 2 == 0 else EXPORTERS[::-1]:
            QUANTIZED_WEIGHTS.clear()
            evaluator = Evaluator(ref, EvalSettings(exporter=exporter), tmp / exporter / "artifacts",
                                  tmp / exporter / "exports", task=task)
            timings: dict[str, float] = {}
            start = time.perf_counter()
            evaluator.build(candidate, tmp / exporter / "artifacts" / str(i), timings)
            totals[exporter].append(time.perf_counter() - start)
            print(f"mix {i}: {exporter:<11} build {totals[exporter][-1]:5.1f} s: "
                  + ", ".join(f"{k} {timings.get(k, 0):.1f}" for k in stages), flush=True)
    dyn, ts = (statistics.median(totals[e]) for e in EXPORTERS)
    print(f"\nmedian whole build of {n} sampled pruned mixes: dynamo {dyn:.1f} s, torchscript {ts:.1f} s "
          f"({ts / dyn:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mixes", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task()
    layers = quantizable_layers(task.model)
    groups = pruning_groups(task.model, task.example_inputs, task.output_layers)
    if args.mixes:
        whole_builds(task, layers, groups, args.mixes)
        return
    ratios = {g.name: 0.25 for g in groups[::2]}
    seconds: dict[tuple[str, str], list[float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="export-time-"))
    for repeat in range(args.repeats):
        model = prune(task.model, task.example_inputs, ratios, task.output_layers)
        for exporter in EXPORTERS if repeat % 2 == 0 else EXPORTERS[::-1]:
            fp32, int8 = tmp / f"{exporter}.onnx", tmp / f"{exporter}-int8.onnx"
            start = time.perf_counter()
            with torch.no_grad():
                export_onnx(model, task.example_inputs, fp32, exporter)
            nodes = map_layers(onnx.load(str(fp32)), layer_weights(model, layers), allow_missing=True)
            seconds.setdefault((exporter, "export"), []).append(time.perf_counter() - start)
            start = time.perf_counter()
            apply_precisions(fp32, int8, {node.name: "int8-dynamic" for node in nodes.values()}, [])
            seconds.setdefault((exporter, "quantize"), []).append(time.perf_counter() - start)
            graph = onnx.load(str(fp32), load_external_data=False).graph
            print(f"repeat {repeat}: {exporter:<11} export + map {seconds[exporter, 'export'][-1]:5.1f} s "
                  f"({len(graph.node)} nodes, {len(nodes)}/{len(layers)} layers mapped), quantize int8-dynamic "
                  f"{seconds[exporter, 'quantize'][-1]:5.1f} s", flush=True)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(a) for a in task.evaluation.inputs)).numpy()
    sessions = {f"{e} {kind}": load_artifact(tmp / f"{e}{suffix}.onnx", 1)
                for e in EXPORTERS for kind, suffix in (("fp32", ""), ("int8-dynamic", "-int8"))}
    names = [i.name for i in next(iter(sessions.values())).get_inputs()]
    feeds = latency_feeds(task, names, 1)
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for session in sessions.values():
        session.run(None, feeds)
    for _ in range(args.rounds):
        for label, session in sessions.items():
            for _ in range(args.runs):
                start = time.perf_counter()
                session.run(None, feeds)
                times[label].append((time.perf_counter() - start) * 1e3)
    print(f"\nmedian of {args.repeats} builds (pruned model, {len(ratios)} of {len(groups)} groups by 0.25):")
    for what in ("export", "quantize"):
        dyn, ts = (statistics.median(seconds[e, what]) for e in EXPORTERS)
        print(f"  {what:<9} dynamo {dyn:5.1f} s, torchscript {ts:5.1f} s ({ts / dyn:.2f}x)")
    print(f"latency, {args.rounds} interleaved rounds x {args.runs} runs (1 thread, batch 1), and cosine to torch "
          "over the evaluation texts:")
    for kind in ("fp32", "int8-dynamic"):
        dyn, ts = (statistics.median(times[f"{e} {kind}"]) for e in EXPORTERS)
        cos = [cosine(session_outputs(sessions[f"{e} {kind}"], task.evaluation.inputs, 16), expected)
               for e in EXPORTERS]
        print(f"  {kind:<13} dynamo {dyn:7.1f} ms (cosine {cos[0]:.4f}), torchscript {ts:7.1f} ms "
              f"(cosine {cos[1]:.4f}); torchscript / dynamo {ts / dyn:.3f}")


if __name__ == "__main__":
    main()
