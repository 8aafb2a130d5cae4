"""Pretrained decoders read from GGUF files that Python packages ship (``transformers`` with ``gguf`` and
``accelerate`` dequantizes them to fp32), scored on a corpus shipped with the interpreter: the shared part of the
built-in decoder examples (:mod:`tuner.tasks.smollm2`, :mod:`tuner.tasks.gemma3`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuner.core.errors import TaskError
from tuner.task import Task
from tuner.tasks.decoder import causal_lm_task, token_windows
from tuner.tasks.minilm import CORPORA


def load_gguf(path: Path, who: str, install: str):
    """The tokenizer and the fp32 model of the GGUF file at ``path``; a TaskError naming ``install`` if a package
    it needs is missing."""
    try:
        import accelerate  # noqa: F401  (transformers needs it to read GGUF)
        import gguf  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise TaskError(f"task {who} needs {exc.name}: {install}") from None
    hf_logging.disable_progress_bar()  # one bar per tensor, in every worker
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32").eval()
    return tokenizer, model


def corpus_task(tokenizer, model, who: str, corpus: str, seq_len: int, n_eval: int, calibration_batches: int,
                calibration_batch_size: int, cache_length: int, prompt_tokens: int) -> Task:
    """:func:`tuner.tasks.decoder.causal_lm_task` on ``corpus`` (one of :data:`tuner.tasks.minilm.CORPORA`) cut into
    rows of ``seq_len`` tokens."""
    if corpus not in CORPORA:
        raise TaskError(f"{who}: corpus {corpus!r} is not one of {sorted(CORPORA)}.")
    stream = np.asarray(tokenizer("\n\n".join(CORPORA[corpus]()), return_tensors="np").input_ids[0])
    bos = tokenizer.bos_token_id
    if bos is not None and stream[0] == bos:  # a model whose tokenizer starts every text with BOS expects it
        rows = token_windows(stream[1:], seq_len - 1)  # (Gemma 3: perplexity 216 without it on every row)
        windows = np.concatenate([np.full((len(rows), 1), bos, dtype=rows.dtype), rows], axis=1)
    else:
        windows = token_windows(stream, seq_len)
    return causal_lm_task(model, windows, n_eval, calibration_batches, calibration_batch_size, cache_length,
                          prompt_tokens=prompt_tokens)
