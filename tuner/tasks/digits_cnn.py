"""Built-in example task: a small residual CNN on scikit-learn's bundled digits.

The 8x8 images are upsampled to ``size`` x ``size`` so that one inference costs milliseconds.
The model is trained on first use (seeded) and cached on disk under a key made of its settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tuner.task import Evaluation, Task


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class DigitsResNet(nn.Module):
    """11 convolutions with BatchNorm and ReLU in three residual stages, and a Linear head."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(ResidualBlock(width, width, 1), ResidualBlock(width, width, 1))
        self.layer2 = ResidualBlock(width, 2 * width, 2)
        self.layer3 = ResidualBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_digits_split(size: int, seed: int, test_fraction: float = 0.2):
    """Digits as float32 NCHW images in [0, 1] upsampled to ``size``; a seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).numpy()
    return train_test_split(
        images, data.target.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=data.target
    )


def cache_dir() -> Path:
    root = os.environ.get("TUNER_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tuner"
    return Path(root)


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(xt) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def cached_training(model: nn.Module, name: str, settings: dict, train: Callable[[nn.Module], None]) -> nn.Module:
    """``model`` trained by ``train`` (seeded by the caller), or its weights from the on-disk cache when these
    ``settings`` were trained before under ``name``."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / name / f"{key}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    with torch.random.fork_rng():
        train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
    return model.eval()


def trained_model(width: int, size: int, epochs: int, seed: int) -> DigitsResNet:
    """The trained model, from the on-disk cache when these settings were trained before."""
    settings = {"width": width, "size": size, "epochs": epochs, "seed": seed, "version": 1}
    torch.manual_seed(seed)
    model = DigitsResNet(width)

    def train(m: nn.Module) -> None:
        x_train, _, y_train, _ = load_digits_split(size, seed)
        torch.manual_seed(seed)
        _train(m, x_train, y_train, epochs, seed)

    return cached_training(model, "digits_cnn", settings, train)


def accuracy(labels: np.ndarray):
    def metric(logits: np.ndarray) -> float:
        return float((logits.argmax(axis=1) == labels).mean())

    return metric


def make_task(width: int = 48, size: int = 32, epochs: int = 6, seed: int = 0, calibration_batches: int = 16) -> Task:
    """The built-in ``digits_cnn`` task: residual CNN, accuracy on a held-out 20% split."""
    model = trained_model(width, size, epochs, seed)
    x_train, x_test, _, y_test = load_digits_split(size, seed)
    rng = np.random.default_rng(seed)
    calib_idx = rng.choice(len(x_train), size=calibration_batches * 8, replace=False)
    calibration = [(torch.from_numpy(x_train[calib_idx[i : i + 8]]),) for i in range(0, len(calib_idx), 8)]
    return Task(
        model=model,
        example_inputs=(torch.from_numpy(x_test[:1]),),
        calibration_inputs=calibration,
        evaluation=Evaluation(inputs=(x_test,), metric=accuracy(y_test), metric_name="accuracy"),
        output_layers=("fc",),
    )
