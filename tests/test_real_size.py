"""The real-size built-in examples build, score and stay within memory at full size (slow: a 25.6M-parameter
ResNet-50 and a 109M-parameter BERT-base encoder, each exported and built in int8)."""

import pytest

from tuner.build.layers import quantizable_layers
from tuner.core.candidate import Candidate
from tuner.evaluate import Evaluator
from tuner.experiment import EvalSettings
from tuner.taskref import TaskRef

pytestmark = pytest.mark.slow
SETTINGS = EvalSettings(warmup=1, repeats=5)


def evaluate(tmp_path, spec, args, candidates):
    ref = TaskRef(spec, args, ".")
    task = ref.load()
    evaluator = Evaluator(ref, SETTINGS, tmp_path / "artifacts", tmp_path / "exports", task=task)
    return task, [evaluator.evaluate(c) for c in candidates]


def test_resnet50_at_full_size_builds_int8_and_pruned(tmp_path):
    from tuner.tasks.resnet50 import make_task

    task = make_task(n_eval=8, calibration_batches=1)
    params = sum(p.numel() for p in task.model.parameters())
    assert params > 25e6
    layers = quantizable_layers(task.model)
    assert len(layers) == 54  # 53 convolutions and the classifier
    int8 = Candidate(precision=tuple((name, "int8") for name in layers))
    _, (fp32, quantized) = evaluate(tmp_path, "tuner.tasks.resnet50:make_task",
                                    {"n_eval": 8, "calibration_batches": 1}, [Candidate(), int8])
    assert fp32.completed and quantized.completed, (fp32.error, quantized.error)
    assert fp32.metric == pytest.approx(1.0, abs=1e-5)  # fidelity to itself
    assert 0.9 < quantized.metric < 1.0
    assert fp32.size_mb > 100 and quantized.size_mb < 0.3 * fp32.size_mb  # int8 weights: a quarter of fp32
    assert quantized.memory["build"] > 0.1 * fp32.size_mb


def test_bert_base_at_full_size_builds_dynamic_int8_with_pruned_heads(tmp_path):
    args = {"seq_len": 32, "n_eval": 8, "calibration_batches": 1}
    from tuner.tasks.bert_base import make_task

    task = make_task(**args)
    assert sum(p.numel() for p in task.model.parameters()) > 100e6
    layers = quantizable_layers(task.model)
    assert len(layers) == 12 * 6
    candidate = Candidate(precision=tuple((name, "int8-dynamic") for name in layers),
                          prune=(("+".join(f"encoder.encoder.layer.0.attention.self.{n}" for n in ("query", "key", "value")),
                                  0.25), ("encoder.encoder.layer.0.intermediate.dense", 0.5)))
    _, (result,) = evaluate(tmp_path, "tuner.tasks.bert_base:make_task", args, [candidate])
    assert result.completed, result.error
    assert 0.9 < result.metric <= 1.0
    # the fp32 export is 436 MB; int8 Linear weights leave the 94 MB word embeddings in fp32
    assert result.size_mb < 0.45 * 436
    assert result.model_stats["params_ratio"] < 1.0
