"""MLflow records stay within MLflow's limits however many layers a model has; the rest goes to candidate.json."""

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from tuner.core.candidate import Candidate
from tuner.core.records import LatencyStats, TrialResult
from tuner.results.tracking import MlflowRecorder


def test_a_600_layer_candidate_logs_within_mlflow_limits(tmp_path, mlflow_uri):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    uri = mlflow_uri
    recorder = MlflowRecorder(uri, "big", "accuracy", "uid-1")
    layers = [f"encoder.layer.{i // 6}.block.{i % 6}.dense" for i in range(600)]
    candidate = Candidate(precision=tuple((name, ("int8", "fp32", "int8-dynamic-pc")[i % 3])
                                          for i, name in enumerate(layers)),
                          prune=tuple((f"group.{i}", 0.25) for i in range(300)),
                          disabled_optimizers=("NchwcTransformer", "ConvActivationFusion"))
    result = TrialResult("k" * 16, candidate.to_dict(), metric=0.9, latency=LatencyStats(1.0, 1.1, 0.01, 10),
                         size_mb=3.0, timings={"quantize": 1.0}, artifact_sha256="0" * 64,
                         environment={"cpu": "x", "threads": 1})
    run_id = recorder.log_trial(0, result, candidate.summary())
    run = MlflowClient(uri).get_run(run_id)
    params = run.data.params
    assert len(params) <= MAX_PARAMS_TAGS_PER_BATCH and all(len(v) <= MAX_PARAM_VAL_LENGTH for v in params.values())
    assert params["summary"] == "int8-dynamic-pc 200, int8 200, fp32 200; pruned 300 groups (max 25%, batchnorm); " \
                                "opt=all; " \
                                "off ConvActivationFusion+NchwcTransformer"
    logged = json.loads(Path(MlflowClient(uri).download_artifacts(run_id, "candidate.json", str(tmp_path))).read_text())
    assert len(logged["candidate"]["precision"]) == 600 and len(logged["candidate"]["prune"]) == 300
    assert run.data.tags["tuner.artifact_sha256"] == "0" * 64 and run.data.tags["tuner.env.cpu"] == "x"
    assert recorder.logged_result(run_id) == result  # what a resumed driver adopts is what was logged
