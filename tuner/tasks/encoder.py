"""Sentence-embedding tasks for transformer encoders: mean-pooled embeddings, scored by fidelity to fp32.

The metric is the mean cosine similarity between a candidate's embeddings and the fp32 model's on the
same texts. Nearest-neighbour agreement (does each text keep the same nearest neighbour among the
others?) is recorded beside it: it is what a retrieval system built on the embeddings would notice.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from tuner.task import Evaluation, Task

# Encoder outputs that write to the residual stream, by family (BERT/RoBERTa/ELECTRA/MPNet: ``output.dense``;
# DistilBERT: ``out_lin``, ``lin2``; MPNet's attention: ``attn.o``). Pruning keeps their width: the embedding
# width is the model's output. Heads (q/k/v) and FFN units stay prunable.
RESIDUAL_WRITERS = ("output.dense", "attention.out_lin", "ffn.lin2", "attn.o")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def encoder_inputs(encoder: nn.Module) -> tuple[str, ...]:
    """The inputs of INPUT_NAMES that the encoder's forward takes (DistilBERT, MPNet: no token_type_ids)."""
    params = inspect.signature(encoder.forward).parameters
    names = tuple(n for n in INPUT_NAMES if n in params)
    if names[:2] != INPUT_NAMES[:2]:
        raise TypeError(f"{type(encoder).__name__}.forward must take input_ids and attention_mask; it takes "
                        f"{', '.join(params)}.")
    return names


class MeanPooledEncoder(nn.Module):
    """A Hugging Face encoder followed by attention-masked mean pooling. Takes the encoder's own inputs
    (:func:`encoder_inputs`), in the order of INPUT_NAMES."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = encoder_inputs(encoder)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_cosine(reference: np.ndarray):
    ref = _unit(reference.astype(np.float64))

    def metric(embeddings: np.ndarray) -> float:
        return float(np.mean(np.sum(_unit(embeddings.astype(np.float64)) * ref, axis=1)))

    return metric


def nearest_neighbour_agreement(reference: np.ndarray):
    def nearest(x: np.ndarray) -> np.ndarray:
        sim = _unit(x.astype(np.float64)) @ _unit(x.astype(np.float64)).T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    ref_nn = nearest(reference)

    def metric(embeddings: np.ndarray) -> float:
        return float(np.mean(nearest(embeddings) == ref_nn))

    return metric


def embedding_task(encoder: nn.Module, tokens: dict[str, np.ndarray], n_eval: int, calibration_batches: int,
                   calibration_batch_size: int, eval_batch_size: int = 32) -> Task:
    """A Task over tokenized texts: the first ``n_eval`` rows are scored, the following ones calibrate.

    ``tokens`` holds ``input_ids``, ``attention_mask`` and, for encoders that take them, ``token_type_ids``
    as int64 arrays (rows, seq). Any Hugging Face encoder family works: the inputs come from its forward.
    """
    model = MeanPooledEncoder(encoder).eval()
    names = model.input_names
    missing = [n for n in names if n not in tokens]
    if missing:
        raise ValueError(f"{type(encoder).__name__} takes {', '.join(names)}, but the tokens lack {', '.join(missing)}.")
    arrays = tuple(np.ascontiguousarray(tokens[n], dtype=np.int64) for n in names)
    n_cal = calibration_batches * calibration_batch_size
    if len(arrays[0]) < n_eval + n_cal:
        raise ValueError(f"need {n_eval + n_cal} texts ({n_eval} to score, {n_cal} to calibrate), "
                         f"got {len(arrays[0])}.")
    eval_inputs = tuple(a[:n_eval] for a in arrays)
    with torch.no_grad():
        reference = torch.cat([model(*(torch.from_numpy(a[i:i + eval_batch_size]) for a in eval_inputs))
                               for i in range(0, n_eval, eval_batch_size)]).numpy()
    calibration = [
        tuple(torch.from_numpy(a[n_eval + b * calibration_batch_size: n_eval + (b + 1) * calibration_batch_size])
              for a in arrays)
        for b in range(calibration_batches)
    ]
    evaluation = Evaluation(
        inputs=eval_inputs, metric=mean_cosine(reference), metric_name="cosine", direction="maximize",
        batch_size=eval_batch_size, extra_metrics={"nn_agreement": nearest_neighbour_agreement(reference)},
    )
    example = tuple(torch.from_numpy(a[:2]) for a in arrays)
    residual = tuple(name for name, m in model.named_modules()
                     if isinstance(m, nn.Linear) and name.endswith(RESIDUAL_WRITERS))
    return Task(model=model, example_inputs=example, calibration_inputs=calibration, evaluation=evaluation,
                output_layers=residual)
