"""Small models of the families users bring, for the conformance matrix (``test_conformance.py``).

Each ``make_task(family=..., batch=...)`` builds an untrained model (seeded) and scores candidates by fidelity:
the mean cosine similarity of their first output to the fp32 model's, on held-out random inputs. Built in
well under a second; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tuner import Evaluation, Task


class PlainCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class ResidualDepthwiseCNN(nn.Module):
    """MobileNetV2-style inverted residual (1x1 expand, 3x3 depthwise, 1x1 project, skip) and a grouped conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.BatchNorm2d(48), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4), nn.BatchNorm2d(32),
                                     nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.fc(self.grouped(x).mean((2, 3)))


class ReshapeCNN(nn.Module):
    """A classifier after a reshape to a hard-coded width: pruning the last conv breaks it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc(x.reshape(x.shape[0], 32 * 4 * 4))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))

    def forward(self, x):
        return self.net(x)


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]):
        super().__init__()
        self.proj = nn.Linear(8, 32)
        self.rnn = cell(32, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        out, _ = self.rnn(torch.relu(self.proj(x)))
        return self.head(out[:, -1])


class TwoInputsTwoOutputs(nn.Module):
    """An image-like and a tabular input; class logits and a box (both heads are output layers)."""

    def __init__(self):
        super().__init__()
        self.image = nn.Linear(16, 32)
        self.tabular = nn.Linear(6, 32)
        self.body = nn.Linear(64, 64)
        self.classes = nn.Linear(64, 5)
        self.box = nn.Linear(64, 4)

    def forward(self, image, tabular):
        h = torch.cat([torch.relu(self.image(image)), torch.relu(self.tabular(tabular))], dim=1)
        h = torch.relu(self.body(h))
        return self.classes(h), self.box(h)


class Branching(nn.Module):
    """Data-dependent control flow: torch.export cannot trace it, the TorchScript tracer takes one branch."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 32)
        self.b = nn.Linear(32, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


def _encoder(family: str) -> nn.Module:
    import transformers

    if family == "bert":
        config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=32)
        return transformers.BertModel(config, add_pooling_layer=False)
    if family == "mpnet":
        config = transformers.MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=40)
        return transformers.MPNetModel(config, add_pooling_layer=False)
    config = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                           max_position_embeddings=32)
    return transformers.DistilBertModel(config)


def _inputs(family: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    shapes = {"plain-cnn": [(3, 16, 16)], "residual-dw-cnn": [(3, 16, 16)], "reshape-cnn": [(3, 16, 16)],
              "mlp": [(20,)], "lstm": [(6, 8)], "gru": [(6, 8)], "two-in-two-out": [(16,), (6,)],
              "branching": [(12,)]}
    return tuple(rng.standard_normal((n, *shape)).astype(np.float32) for shape in shapes[family])


def _model(family: str) -> nn.Module:
    return {"plain-cnn": PlainCNN, "residual-dw-cnn": ResidualDepthwiseCNN, "reshape-cnn": ReshapeCNN, "mlp": MLP,
            "lstm": lambda: Recurrent(nn.LSTM), "gru": lambda: Recurrent(nn.GRU),
            "two-in-two-out": TwoInputsTwoOutputs,
            "branching": Branching}[family]()


def cosine_to(reference: np.ndarray):
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)

    def fidelity(outputs: np.ndarray) -> float:
        out = outputs.reshape(len(outputs), -1).astype(np.float64)
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return float(np.mean(np.sum(out * ref, axis=1)))
    return fidelity


def make_task(family: str, batch: int = 4, n_eval: int = 64, broken: str = "") -> Task:
    """``broken``: ``forward`` (example inputs the model cannot take), ``metric`` (a metric that raises) or
    ``finetune`` (a fine-tuning hook that raises): the user errors `tuner` must report in one line."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if family in ENCODERS:
        from tuner.tasks.encoder import embedding_task

        rows = n_eval + 2 * 8
        tokens = {"input_ids": rng.integers(1, 100, (rows, 12)), "attention_mask": np.ones((rows, 12), np.int64),
                  "token_type_ids": np.zeros((rows, 12), np.int64)}
        task = embedding_task(_encoder(family).eval(), tokens, n_eval, calibration_batches=2,
                              calibration_batch_size=8, eval_batch_size=16)
        example = tuple(t[:batch] for t in task.calibration_inputs[0])
        return Task(task.model, example, task.calibration_inputs, task.evaluation, task.output_layers)
    model = _model(family).eval()
    held_out = _inputs(family, n_eval, rng)
    with torch.no_grad():
        reference = model(*(torch.from_numpy(a) for a in held_out))
    reference = (reference[0] if isinstance(reference, tuple) else reference).numpy()
    calibration = [tuple(torch.from_numpy(a) for a in _inputs(family, 8, rng)) for _ in range(2)]
    example = tuple(torch.from_numpy(a) for a in _inputs(family, batch, rng))
    if broken == "forward":
        example = tuple(t[..., :-1] for t in example)
    metric = cosine_to(reference)
    if broken == "metric":
        def metric(outputs: np.ndarray) -> float:
            raise KeyError("labels")
    evaluation = Evaluation(inputs=held_out, metric=metric, metric_name="cosine", batch_size=16)
    output_layers = {"two-in-two-out": ("classes", "box")}.get(family, ())
    return Task(model, example, calibration, evaluation, output_layers,
                finetune=_failing_finetune if broken == "finetune" else None)


def _failing_finetune(model: nn.Module) -> None:
    raise FileNotFoundError("train.csv")


ENCODERS = ("bert", "distilbert", "mpnet")
FAMILIES = ("plain-cnn", "residual-dw-cnn", "mlp", "lstm", "gru", "bert", "distilbert", "two-in-two-out")
