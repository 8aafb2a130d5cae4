"""A model written for this experiment, as a user brings one: a small Vision Transformer on scikit-learn's digits.

Nothing in `tuner` knows this architecture: patch embedding by convolution, pre-norm encoder blocks with
their own attention (separate query/key/value Linears), GELU MLPs, a class token and a Linear head. It is
trained on first use (seeded; 40 epochs took 68 s on 16 cores) and cached like the built-in digits CNN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tuner import Evaluation, Task
from tuner.tasks.digits_cnn import accuracy, cached_training, load_digits_split


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # head size from the Linear's own width, so that pruning whole heads' channels stays consistent
        split = lambda t: t.reshape(b, n, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DigitsViT(nn.Module):
    """Patches of ``patch`` x ``patch`` pixels, ``depth`` pre-norm blocks, classification from a class token."""

    def __init__(self, size: int = 32, patch: int = 4, dim: int = 128, depth: int = 6, heads: int = 4,
                 hidden: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = epochs * ((len(xt) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            batch = xt[idx]
            # small random shifts: digits has 1,437 training images, a ViT overfits them without augmentation
            dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(batch), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def trained_model(size: int, dim: int, depth: int, epochs: int, seed: int) -> DigitsViT:
    settings = {"model": "vit", "size": size, "dim": dim, "depth": depth, "epochs": epochs, "seed": seed}
    torch.manual_seed(seed)
    model = DigitsViT(size=size, dim=dim, depth=depth, hidden=2 * dim)

    def train(m: nn.Module) -> None:
        x_train, _, y_train, _ = load_digits_split(size, seed)
        torch.manual_seed(seed)
        _train(m, x_train, y_train, epochs, seed)

    return cached_training(model, "vit_digits", settings, train)


def make_task(size: int = 32, dim: int = 128, depth: int = 6, epochs: int = 40, seed: int = 0) -> Task:
    model = trained_model(size, dim, depth, epochs, seed)
    x_train, x_test, _, y_test = load_digits_split(size, seed)
    rng = np.random.default_rng(seed)
    calib_idx = rng.choice(len(x_train), size=128, replace=False)
    calibration = [(torch.from_numpy(x_train[calib_idx[i : i + 8]]),) for i in range(0, len(calib_idx), 8)]
    return Task(
        model=model,
        example_inputs=(torch.from_numpy(x_test[:1]),),
        calibration_inputs=calibration,
        evaluation=Evaluation(inputs=(x_test,), metric=accuracy(y_test), metric_name="accuracy"),
        output_layers=("head",),
    )
