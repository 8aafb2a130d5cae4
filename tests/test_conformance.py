"""The conformance matrix: one suite, many model families (like Optuna's sampler contract tests).

Each family of :mod:`zoo` must export with a dynamic batch axis (example batch 1 or 4), build every precision
kind its layers allow (each build passes the kernel check), prune where prunable, and run a short study in
process; or be refused before any trial with a message that says why and what to do. Nothing here asserts on
a measured latency."""

import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
import yaml
import zoo

import tuner
from tuner.build.export import export_onnx
from tuner.build.prune import prune as prune_model
from tuner.build.prune import pruning_groups
from tuner.core.candidate import Candidate
from tuner.core.precision import FP32, KINDS, TORCH_LAYER_OPS
from tuner.core.records import StudyMeta, TrialMeta
from tuner.core.storage import load_finished_study
from tuner.evaluate import Evaluator
from tuner.experiment import EvalSettings
from tuner.taskref import TaskRef

pytestmark = pytest.mark.slow
KIND_CHOICES = {name: f"{name}-b32" if kind.block_sizes else name for name, kind in KINDS.items()
                if not set(kind.op_types) <= set(TORCH_LAYER_OPS)}  # one per ONNX Runtime kind


# What each family's layers allow (besides fp32) and whether the model lets `tuner` prune it.
EXPECTED = {
    "plain-cnn": ({"int8"}, True), "residual-dw-cnn": ({"int8"}, True), "mlp": ({"int8"}, True),
    "lstm": (set(KIND_CHOICES.values()) - {FP32}, True),  # the Linear before the LSTM reads 3-D: a MatMul
    "gru": (set(KIND_CHOICES.values()) - {FP32}, False),  # torch-pruning cannot trace GRU: precision only
    "bert": (set(KIND_CHOICES.values()) - {FP32}, True), "distilbert": (set(KIND_CHOICES.values()) - {FP32}, True),
    "two-in-two-out": ({"int8"}, True),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def write_experiment(tmp_path, name, family, batch=1, trials=3, space="auto", extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        task: zoo:make_task
        task_args: {{family: {family}, batch: {batch}}}
        search_space: {space}
        trials: {trials}
        seed: 0
        max_metric_drop: 0.5
        front_every: 100
        latency: {{threads: 1, warmup: 1, repeats: 5}}
        auto_kinds: all
    """) + extra)
    return path


def run_study(path, tmp_path, store, trials=None, log=None):
    return tuner.run(path, trials=trials, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True,
                     progress=False, log=log or (lambda line: None))


CASES = [(family, 1) for family in zoo.FAMILIES] + [("mlp", 4)]


@pytest.mark.parametrize("family,batch", CASES, ids=[f"{f}-batch{b}" for f, b in CASES])
def test_family_exports_builds_every_kind_prunes_and_runs_a_study(family, batch, tmp_path, store):
    kinds, prunable = EXPECTED[family]
    name = f"{family}-b{batch}"
    lines = []
    run_study(write_experiment(tmp_path, name, family, batch), tmp_path, store, trials=1 + len(kinds) + 1,
              log=lines.append)
    run_dir = tmp_path / "runs" / name
    study = load_finished_study(name, tmp_path / "runs")
    assert StudyMeta.load(study).has_baseline

    # the generated space offers every kind the layers allow, and pruning where the model lets it
    space = yaml.safe_load((run_dir / "space.yaml").read_text())
    assert {c for rule in space["layers"] for c in rule["precision"]} == kinds | {FP32}
    assert any("prune" in rule for rule in space["layers"]) == prunable
    if family == "gru":  # reported, kept fp32
        assert any(line.startswith("kept fp32, not searched") and "rnn (GRU)" in line for line in lines)
    if family == "lstm":  # searched: fp32 or ORT's dynamic int8 LSTM (per-channel weights)
        assert next(r for r in space["layers"] if r["match"] == "rnn")["precision"] == [FP32, "int8-dynamic-pc"]

    # one uniform reference per kind, each built, kernel-checked and scored; then a sampled trial
    references = {TrialMeta.of(t).reference: t for t in study.trials if TrialMeta.of(t).reference}
    assert set(references) == {"fp32"} | {f"uniform {k}" for k in kinds}
    failed = {label: t.user_attrs.get("fail_reason") for label, t in references.items()
              if t.state != optuna.trial.TrialState.COMPLETE}
    assert not failed
    assert len(study.trials) == 1 + len(kinds) + 1
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))

    # pruning: every prunable layer at its largest ratio at once, built and scored; the export (of the pruned
    # model, or of the model where nothing prunes) keeps the batch axis dynamic whatever the example batch, and
    # computes what torch computes at another batch size
    task = zoo.make_task(family, batch)
    model, export = task.model, tmp_path / "fp32.onnx"
    if prunable:
        prune = {rule["match"]: rule["prune"]["high"] for rule in space["layers"] if "prune" in rule}
        groups = pruning_groups(task.model, task.example_inputs, task.output_layers)
        ratios = tuple((g.name, prune[g.members[0]]) for g in groups if g.members[0] in prune)
        ref = TaskRef("zoo:make_task", {"family": family, "batch": batch})
        evaluator = Evaluator(ref, EvalSettings(warmup=1, repeats=5), tmp_path / "artifacts", task=task)
        candidate = Candidate(prune=ratios, recovery="none")
        result = evaluator.build_and_score(candidate)
        assert result.completed, result.error
        assert result.model_stats["params_ratio"] < 1
        model = prune_model(task.model, task.example_inputs, dict(ratios), task.output_layers)
        export = evaluator.export_root / candidate.prune_key(ref.fingerprint()) / "fp32.onnx"
    else:
        export_onnx(task.model, task.example_inputs, export)
    graph = onnx.load(str(export)).graph
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in graph.input)
    session = ort.InferenceSession(str(export))
    feeds = tuple(a[:3] for a in task.evaluation.inputs)
    got = session.run(None, {i.name: a for i, a in zip(session.get_inputs(), feeds)})
    with torch.no_grad():
        want = model.eval()(*(torch.from_numpy(a) for a in feeds))
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("family", zoo.ENCODERS)
def test_the_encoder_space_of_each_family_resolves_on_its_model(family):
    """search_spaces/encoder_<family>.yaml against a small model of that family through the built-in encoder task:
    every rule matches, heads and FFN units are pruning groups, the residual writers are not."""
    from pathlib import Path

    from tuner.build.layers import layer_op_types
    from tuner.space import SearchSpace, load_space_file

    task = zoo.make_task(family, batch=2)
    assert ("token_type_ids" in task.model.input_names) == (family == "bert")
    path = Path(__file__).parents[1] / "search_spaces" / f"encoder_{family}.yaml"
    space = SearchSpace(load_space_file(path), layer_op_types(task.model, task.example_inputs),
                        pruning_groups(task.model, task.example_inputs, task.output_layers))
    assert set(space.precision_choices) == set(space.layers) and len(space.layers) == 12
    heads = [g for g in space.prune_choices if g.count("+") == 2]
    if family == "mpnet":  # one relative-position bias for all layers couples every layer's heads: FFN only
        assert not heads and len(space.prune_choices) == 2
    else:
        assert len(heads) == 2 and len(space.prune_choices) == 4  # per layer: one attention block, one FFN
    assert not any(name in group for name in task.output_layers for group in space.prune_choices)
