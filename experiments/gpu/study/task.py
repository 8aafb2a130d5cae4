"""The GPU study's task: ResNet-50 or BERT-base as `experiments/gpu/kinds_table.py` builds them (seeded weights; the
tasks' own inputs where their data packages are installed, else seeded random ones), scored by the mean cosine of
each output to the fp32 eager model's (computed here, with TF32 off)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # kinds_table, beside this folder

from kinds_table import bert_base, resnet50  # noqa: E402

from tuner import Evaluation, Task  # noqa: E402


def make_task(model: str = "resnet50", n_eval: int = 256, seq_len: int = 128, batch: int = 32,
              channels_last: bool = False, tiny: bool = False) -> Task:
    net, inputs, _ = resnet50(n_eval, tiny) if model == "resnet50" else bert_base(n_eval, tiny, seq_len)
    if channels_last:  # convolutions in NHWC, as tensor cores want them (the fp32 baseline too)
        net = net.to(memory_format=torch.channels_last)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        on_device = net.to(device)
        with torch.inference_mode():
            reference = torch.cat([on_device(*(x[i:i + batch].to(device) for x in inputs)).float().cpu()
                                   for i in range(0, n_eval, batch)]).numpy()
        net = on_device.cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)

    def cosine(outputs: np.ndarray) -> float:
        normed = outputs / np.maximum(np.linalg.norm(outputs, axis=1, keepdims=True), 1e-12)
        return float((normed * unit).sum(axis=1).mean())

    example = tuple(x[:batch] for x in inputs)
    return Task(net.eval(), example, [example], Evaluation(tuple(x.numpy() for x in inputs), cosine, "cosine",
                                                          batch_size=batch), output_layers=())
