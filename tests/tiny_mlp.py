"""A small MLP on scikit-learn's digits, trained in well under a second: for fast study-loop tests.

``fragile=True`` gives a metric that raises for any model whose outputs drift from the fp32 model's (every
quantized candidate fails to score), to test how failures are recorded."""

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from tuner import Evaluation, Task


def make_task(hidden: int = 32, fragile: bool = False, seed: int = 0, scoring_marker: str = "",
              scoring_s: float = 0.0, outlier: float = 0.0) -> Task:
    """``scoring_marker``, ``scoring_s``: the metric touches that file, then takes that long (a trial whose
    scoring a test can catch in flight). ``outlier``: a pixel that is 0 in every digit takes this value, and
    the first layer's weights on it are zeroed: the fp32 model computes the same, but the per-tensor int8
    scale of that layer's input is stretched until the real pixels round to nothing (a layer made
    deliberately fragile; the other layers never see the pixel)."""
    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[:1400]), y[:1400]).backward()
        optimizer.step()
    model.eval()
    if outlier:  # pixel 0 is 0 in every digit: after training, its weights are zeroed and it becomes `outlier`
        assert not digits.data[:, 0].any()
        with torch.no_grad():
            model[0].weight[:, 0] = 0.0
        x[:, 0] = outlier
    held_out, labels = x[1400:].numpy(), digits.target[1400:]
    with torch.no_grad():
        reference = model(x[1400:]).numpy()

    def accuracy(logits: np.ndarray) -> float:
        if scoring_marker:
            Path(scoring_marker).touch()
            time.sleep(scoring_s)
        if fragile and np.abs(logits - reference).max() > 1e-4:
            raise ValueError("synthetic failure: outputs drifted from fp32")
        return float((logits.argmax(1) == labels).mean())

    return Task(model, (x[:8],), [(x[i:i + 64],) for i in range(0, 256, 64)],
                Evaluation(inputs=(held_out,), metric=accuracy), output_layers=("4",))
