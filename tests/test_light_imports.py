"""`tuner front` and `tuner pick` (without --register) print and export without loading torch or Ray.

The study is written by hand with Optuna and the typed records (as a study would leave it), and its front
member's MLflow run holds a small ONNX file, so no model is built here."""

import json
import subprocess
import sys
import textwrap

import onnx
import optuna
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper

from tuner.core.records import LatencyStats, StudyMeta, TrialMeta, TrialResult
from tuner.core.storage import open_study
from tuner.results.tracking import MlflowRecorder

HEAVY = ("torch", "ray", "torch_pruning")


def write_study(tmp_path, uri):
    run_dir = tmp_path / "runs" / "light"
    run_dir.mkdir(parents=True)
    study = open_study(run_dir, "light", optuna.samplers.RandomSampler(), ["maximize", "minimize"])
    StudyMeta(uid="u1", metric_name="accuracy", max_metric_drop=0.1, baseline_metric=0.9, baseline_latency_ms=2.0,
              tracking_uri=uri).save(study)
    recorder = MlflowRecorder(uri, "light", "accuracy", "u1")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]))
    candidate = {"precision": {}, "prune": {}, "opt_level": "all", "fusions": [], "disabled_optimizers": [],
                 "recovery": "none", "importance": "magnitude"}
    helper.set_model_props(model, {"tuner.candidate": json.dumps(candidate),
                                   "tuner.runtime": json.dumps({"opt_level": "all", "disabled_optimizers": []})})
    onnx.save(model, str(tmp_path / "model.onnx"))
    for number, (metric, latency) in enumerate([(0.9, 2.0), (0.85, 1.0)]):
        trial = study.ask({"precision.fc": optuna.distributions.CategoricalDistribution(["fp32", "int8"])})
        result = TrialResult(f"key{number}", candidate, metric=metric, latency=LatencyStats(latency, latency, 0.0, 3),
                             size_mb=1.0, environment={"threads": 1})
        run_id = recorder.log_trial(number, result, "fp32 1")
        MlflowClient(uri).log_artifact(run_id, str(tmp_path / "model.onnx"))
        for key, value in {**TrialMeta.attrs_of(result, 0.9 - metric), "summary": "fp32 1",
                           "mlflow_run_id": run_id}.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("metric_drop", 0.9 - metric - 0.1)
        study.tell(trial, [metric, latency])
    recorder.close()


def test_front_and_pick_load_neither_torch_nor_ray(tmp_path, mlflow_uri):
    uri = mlflow_uri
    write_study(tmp_path, uri)
    script = textwrap.dedent(f"""
        import sys
        from tuner.cli import main
        assert main(["front", "light", "--output-dir", "runs"]) == 0
        assert main(["pick", "light", "--min-accuracy", "0.8", "--out", "picked", "--output-dir", "runs"]) == 0
        print("HEAVY:", sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY: []" in proc.stdout
    assert "0.8500" in proc.stdout  # the front table and the pick
    picked = json.loads((tmp_path / "picked" / "candidate.json").read_text())
    assert picked["format"] == 1 and picked["trial"] == 1 and picked["metrics"]["accuracy"] == 0.85
    assert (tmp_path / "picked" / "model.onnx").read_bytes() == (tmp_path / "model.onnx").read_bytes()


def test_the_api_functions_stay_functions_after_every_submodule_is_imported():
    # A submodule named like an API function would replace it on the package once imported (`tuner.verify`
    # became the module after the CLI imported it). Import every module, then read each public name.
    code = textwrap.dedent("""
        import importlib, pkgutil, tuner
        for info in pkgutil.walk_packages(tuner.__path__, "tuner."):
            importlib.import_module(info.name)
        print(sorted(name for name in tuner.__all__ if not callable(getattr(tuner, name))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
