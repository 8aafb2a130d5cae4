"""A study on PyTorch's own runtime (``runtime: torch``) on this machine's CPU: the same study, space rules, records,
MLflow and pick as on ONNX Runtime, its artifacts compiled by torch and measured as they load. No timing asserted."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import tuner
from tuner.build.torch_runtime import TORCH_KINDS
from tuner.core.candidate import Candidate
from tuner.core.errors import ExperimentError, SpaceError
from tuner.core.records import StudyMeta, TrialMeta
from tuner.core.storage import load_finished_study
from tuner.evaluate_torch import TorchEvaluator
from tuner.experiment import EvalSettings, load_experiment
from tuner.search.torch_target import FlopShareLatency, layer_flops
from tuner.taskref import TaskRef

CPU = torch.device("cpu")
BF16 = TORCH_KINDS["bf16"].refusal(CPU) is None


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def experiment(tmp_path, name, space="auto", trials=6, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        task: {Path(__file__).parent / "tiny_mlp.py"}:make_task
        search_space: {space}
        auto_kinds: all
        trials: {trials}
        seed: 0
        max_metric_drop: 0.02
        runtime: torch
        torch: {{device: cpu, artifact: module}}
        latency: {{threads: 1, warmup: 1, repeats: 5}}
    """) + extra)
    return path


def run(path, tmp_path, store):
    lines = []
    result = tuner.run(path, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
                       log=lines.append)
    return result, lines


@pytest.mark.slow
def test_a_study_on_the_torch_runtime_runs_references_samples_a_front_and_picks_a_model_that_loads(tmp_path, store):
    result, lines = run(experiment(tmp_path, "torch-cpu"), tmp_path, store)
    study = load_finished_study("torch-cpu", tmp_path / "runs")
    trials = study.get_trials(deepcopy=False)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 6
    references = {TrialMeta.of(t).reference for t in trials if TrialMeta.of(t).reference}
    assert references == ({"fp32", "uniform bf16"} if BF16 else {"fp32"})
    assert any("not offered on cpu: fp16" in line for line in lines)  # this CPU has no fp16 units: said, left out
    assert any("not offered on cpu: fp8-e4m3" in line for line in lines)
    distributions = set(trials[-1].distributions)
    assert "compile_mode" in distributions and "cuda_graphs" not in distributions  # no CUDA graphs on a CPU
    kept = [p for p in (tmp_path / "runs" / "torch-cpu" / "artifacts").iterdir() if p.is_dir()]
    assert kept  # the front's models, each with how it must be run
    for folder in kept:
        record = json.loads((folder / "candidate.json").read_text())
        assert Candidate.from_dict(record["candidate"]).on_torch and record["runtime"]["runtime"] == "torch"
        assert (folder / "model.pt").is_file()
    env = TrialMeta.of(trials[0]).environment
    assert env["runtime"] == "torch" and env["device"] == "cpu"
    assert result.front and StudyMeta.load(study).has_baseline

    out = tmp_path / "picked"
    record = tuner.pick("torch-cpu", min_metric=0.0, out=out, output_dir=tmp_path / "runs", tracking_uri=store,
                        register="torch-cpu-model", alias="candidate")
    assert (out / "model.pt").is_file() and not (out / "model.onnx").exists()
    assert record.runtime["runtime"] == "torch" and record.registered_model["version"]
    assert "torch.load('model.pt'" in (out / "MODEL_CARD.md").read_text()
    version = MlflowClient(store).get_model_version_by_alias("torch-cpu-model", "candidate")
    assert version.tags["tuner.runtime"] == "torch"
    # the picked file, loaded as the card says, gives the metric the study measured
    task = TaskRef("tiny_mlp:make_task", {}, str(tmp_path)).load()
    model = torch.load(out / "model.pt", weights_only=False).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(task.evaluation.inputs[0])).float().numpy()
    assert task.evaluation.metric(logits) == pytest.approx(record.metrics["accuracy"], abs=1e-9)
    # `tuner verify`: a fresh process reloads the kept artifact and scores it again
    report = tuner.verify("torch-cpu", record.trial, output_dir=tmp_path / "runs", tracking_uri=store)
    assert not report["rebuilt"] and report["artifact_sha256"]["same"]
    assert report["metric"]["now"] == pytest.approx(report["metric"]["recorded"], abs=1e-9)


def test_the_torch_evaluator_packages_with_aotinductor_and_scores_the_loaded_package(tmp_path):
    settings = EvalSettings(warmup=1, repeats=5, runtime="torch", device="cpu", torch_artifact="package")
    evaluator = TorchEvaluator(TaskRef("tiny_mlp:make_task", {}, str(tmp_path)), settings, tmp_path / "artifacts")
    precision = {"0": "bf16"} if BF16 else {}
    result = evaluator.evaluate(Candidate(precision=tuple(precision.items()), compile_mode="default"))
    assert result.completed, result.error
    assert (tmp_path / "artifacts" / result.key / "model.pt2").is_file()
    eager = evaluator.task.model(torch.from_numpy(evaluator.task.evaluation.inputs[0])).detach().numpy()
    assert abs(result.metric - evaluator.task.evaluation.metric(eager)) <= 0.01
    assert result.latency.repeats == 5 and result.environment["runtime"] == "torch"  # timed as the settings ask


def test_a_model_export_cannot_take_falls_back_to_torch_compile_and_says_why(tmp_path):
    """`if h.sum() > 0` in forward: torch.export refuses the branch, so the artifact is the module, compiled when
    loaded, and its runtime record says why; it still scores and times."""
    settings = EvalSettings(warmup=1, repeats=5, runtime="torch", device="cpu", torch_artifact="package")
    ref = TaskRef(f"{Path(__file__).parent / 'zoo.py'}:make_task", {"family": "branching"}, str(tmp_path))
    evaluator = TorchEvaluator(ref, settings, tmp_path / "artifacts")
    result = evaluator.evaluate(Candidate(compile_mode="default"))
    assert result.completed, result.error
    folder = tmp_path / "artifacts" / result.key
    assert (folder / "model.pt").is_file() and not (folder / "model.pt2").exists()
    runtime = json.loads((folder / "candidate.json").read_text())["runtime"]
    assert runtime["artifact"] == "module" and runtime["package_failed"]
    assert result.metric == pytest.approx(1.0, abs=1e-4)  # the fp32 model, compiled: its cosine to itself


def test_a_kind_the_device_cannot_run_is_refused_with_its_reason(tmp_path):
    (tmp_path / "space.yaml").write_text("layers:\n  - match: 're:.*'\n    precision: [fp32, fp8-e4m3]\n")
    with pytest.raises(SpaceError, match=r"space.yaml: layers\[0\].*'fp8-e4m3' is refused on cpu: .*compute "
                                         "capability 8.9"):
        tuner.run(experiment(tmp_path, "refused", space="space.yaml"), output_dir=tmp_path / "runs",
                  in_process=True, progress=False, log=lambda line: None)
    (tmp_path / "ort.yaml").write_text("layers:\n  - match: 're:.*'\n    precision: [fp32, int8]\n")
    with pytest.raises(SpaceError, match=r"\['int8'\] are ONNX Runtime kinds; on runtime torch"):
        tuner.run(experiment(tmp_path, "ort-kinds", space="ort.yaml"), output_dir=tmp_path / "runs",
                  in_process=True, progress=False, log=lambda line: None)
    evaluator = TorchEvaluator(TaskRef("tiny_mlp:make_task", {}, str(tmp_path)),
                               EvalSettings(runtime="torch", torch_artifact="module"), tmp_path / "artifacts")
    failed = evaluator.evaluate(Candidate(precision=(("2", "fp8-e4m3"),), compile_mode="none"))
    assert not failed.completed and "compute capability 8.9" in failed.error


def test_cuda_on_a_machine_without_one_is_an_error_naming_the_field(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = experiment(tmp_path, "no-gpu", extra="")
    path.write_text(path.read_text().replace("device: cpu", "device: cuda"))
    with pytest.raises(ExperimentError, match="field 'torch.device': 'cuda', but .* sees no CUDA GPU"):
        tuner.run(path, output_dir=tmp_path / "runs", in_process=True, progress=False, log=lambda line: None)
    assert load_experiment(path).torch.device == "cuda"


def test_the_plan_latency_model_weights_each_layer_by_its_share_of_flops():
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    flops = layer_flops(model, (torch.zeros(4, 16),))
    assert flops == {"0": 2 * 4 * 64 * 16, "2": 2 * 4 * 16 * 64}
    latency = FlopShareLatency(10.0, {"fp32": 10.0, "bf16": 4.0}, {"0": 0.5, "2": 0.5})
    assert latency.predict(Candidate(precision=(("0", "bf16"), ("2", "fp32")), compile_mode="none")) == 7.0
    assert np.isclose(latency.predict(Candidate(precision=(("0", "bf16"), ("2", "bf16")), compile_mode="none")), 4.0)
