"""Built-in real-size example: a ResNet-50 (25.6M parameters, 4.1 GFLOPs at 224 x 224).

No PyPI package that installs with the CPU build of torch here ships ImageNet weights (torchvision's wheels
need the CUDA build), so the architecture is Hugging Face's ``ResNetForImageClassification`` at its default
configuration, which is ResNet-50 (bottleneck blocks, depths 3-4-6-3, widths 256-512-1024-2048, 1000
classes), initialized from a seed as ``transformers`` does; BatchNorm statistics are then set by running
the calibration images through it in training mode, as a trained network's would be. The images are
crops of the two photographs scikit-learn ships (``load_sample_images``), at random positions, scales and
flips. The metric is fidelity to the fp32 model: mean cosine between a candidate's logits and fp32's;
top-1 agreement is recorded beside it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tuner.task import Evaluation, Task
from tuner.tasks.encoder import mean_cosine

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


class Logits(nn.Module):
    """The classifier's logits as a plain tensor (Hugging Face models return an output object)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def sample_crops(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` normalized crops (n, 3, size, size) of scikit-learn's two sample photographs."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255) for img in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[1:]
        side = int(rng.uniform(0.25, 1.0) * min(h, w))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = photo[:, top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop.flip(2)
        crops.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    return (torch.stack(crops).numpy() - MEAN) / STD


def top1_agreement(reference: np.ndarray):
    ref = reference.argmax(1)

    def metric(logits: np.ndarray) -> float:
        return float(np.mean(logits.argmax(1) == ref))

    return metric


def make_task(size: int = 224, n_eval: int = 64, calibration_batches: int = 4, calibration_batch_size: int = 8,
              seed: int = 0) -> Task:
    """ResNet-50 at batch 1 x 3 x ``size`` x ``size``, scored on ``n_eval`` crops."""
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    net = ResNetForImageClassification(ResNetConfig(num_labels=1000))
    n_cal = calibration_batches * calibration_batch_size
    images = sample_crops(n_eval + n_cal, size, seed).astype(np.float32)
    evaluation_images, calibration_images = images[:n_eval], images[n_eval:]
    net.train()
    with torch.no_grad():  # BatchNorm running statistics from real images, as training leaves them
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # cumulative average
        net(pixel_values=torch.from_numpy(calibration_images))
    model = Logits(net).eval()
    with torch.no_grad():
        reference = torch.cat([model(torch.from_numpy(evaluation_images[i:i + 16]))
                               for i in range(0, n_eval, 16)]).numpy()
    calibration = [(torch.from_numpy(calibration_images[b * calibration_batch_size:
                                                        (b + 1) * calibration_batch_size]),)
                   for b in range(calibration_batches)]
    evaluation = Evaluation(inputs=(evaluation_images,), metric=mean_cosine(reference), metric_name="cosine",
                            direction="maximize", batch_size=16,
                            extra_metrics={"top1_agreement": top1_agreement(reference)})
    return Task(model=model, example_inputs=(torch.from_numpy(evaluation_images[:2]),),
                calibration_inputs=calibration, evaluation=evaluation, output_layers=("model.classifier.1",))
