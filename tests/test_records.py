"""Typed records: round trips, what earlier versions wrote still loads, a newer format is refused clearly;
the precision registry is complete."""

import optuna
import pytest

from tuner.core.candidate import Candidate
from tuner.core.precision import KINDS, PrecisionError, family, parse
from tuner.core.records import (
    ARTIFACT_FORMAT,
    ArtifactRecord,
    LatencyStats,
    StudyMeta,
    TrialMeta,
    TrialResult,
)
from tuner.core.storage import open_study

CANDIDATE = Candidate(precision=(("fc", "int8"), ("conv", "fp32"))).to_dict()


def test_trial_result_round_trips_and_reads_the_outcome_dicts_of_earlier_versions():
    result = TrialResult("k" * 16, CANDIDATE, metric=0.9, latency=LatencyStats(1.0, 1.2, 0.05, 50), size_mb=2.0,
                         timings={"export": 1.5}, environment={"cpu": "x"}, worker_deaths=1)
    assert TrialResult.from_dict(result.to_dict()) == result
    # outcome.json as the previous version wrote it (Outcome.to_dict, plus worker_deaths from the executor)
    old_complete = {"key": "k" * 16, "candidate": CANDIDATE, "state": "COMPLETE", "error": None, "traceback": None,
                    "metric": 0.9, "extra_metrics": {}, "latency": {"median_ms": 1.0, "p90_ms": 1.2, "cv": 0.05,
                                                                    "repeats": 50},
                    "size_mb": 2.0, "timings": {}, "artifact_dir": "/x", "artifact_sha256": "0" * 64,
                    "environment": {}, "cached_build": False, "cached_export": True, "model_stats": {},
                    "worker_deaths": 0}
    loaded = TrialResult.from_dict(old_complete)
    assert loaded.completed and loaded.latency.median_ms == 1.0 and loaded.cached_export
    old_failed = {"timings": {"wall": 3.0}, "latency": {}, "state": "FAIL", "error": "worker died"}
    failed = TrialResult.from_dict({"key": "", "candidate": {}, **old_failed})
    assert not failed.completed and failed.latency is None and failed.error == "worker died"


def test_a_failed_result_drops_its_latency_and_keeps_its_reason():
    result = TrialResult("k", CANDIDATE, metric=0.9, latency=LatencyStats(1.0, 1.0, 0.0, 3))
    failed = result.failed("timed out")
    assert failed.state == "FAIL" and failed.latency is None and failed.error == "timed out"
    with pytest.raises(ValueError, match="state must be"):
        TrialResult("k", CANDIDATE, state="PRUNED")


def test_trial_attributes_written_from_a_result_read_back_typed():
    result = TrialResult("k", CANDIDATE, metric=0.9, latency=LatencyStats(1.0, 1.2, 0.05, 5), size_mb=2.0,
                         extra_metrics={"top5": 1.0}, worker_deaths=2)
    attrs = TrialMeta.attrs_of(result, 0.01)
    meta = TrialMeta(**attrs)
    assert (meta.key, meta.metric_drop, meta.latency_p90_ms, meta.worker_deaths) == ("k", 0.01, 1.2, 2)
    assert TrialMeta.attrs_of(result.failed("boom"), None) == {"worker_deaths": 2, "fail_reason": "boom"}


@pytest.mark.parametrize("layout", [
    # candidate.json as the build wrote it beside model.onnx
    {"key": "k", "task": "t:f", "task_fingerprint": "f", "candidate": CANDIDATE, "fused_operators": {},
     "kernels": {"fc": "QGemm"}, "layer_nodes": {"fc": "node_fc"}},
    # as logged to the MLflow trial run
    {"trial": 3, "key": "k", "candidate": CANDIDATE, "artifact_sha256": "0" * 64, "environment": {"cpu": "x"}},
    # as `tuner pick` wrote it
    {"study": "s", "trial": 3, "mlflow_run_id": "r", "key": "k", "artifact_sha256": None,
     "metrics": {"accuracy": 0.9}, "baseline": {"accuracy": 0.95}, "runtime": {"opt_level": "all"},
     "environment": {}, "summary": "int8 1", "candidate": CANDIDATE, "params": {"precision.fc": "int8"}},
])
def test_every_earlier_candidate_json_layout_loads_as_format_0(layout, tmp_path):
    record = ArtifactRecord.from_dict(layout)
    assert record.candidate == CANDIDATE and record.key == "k" and record.format == ARTIFACT_FORMAT
    record.write(tmp_path / "candidate.json")
    assert ArtifactRecord.read(tmp_path / "candidate.json") == record


def test_a_newer_or_foreign_record_is_refused_with_the_file_named():
    with pytest.raises(ValueError, match=r"x/candidate.json: artifact record format 99 is newer"):
        ArtifactRecord.from_dict({"format": 99, "candidate": {}}, "x/candidate.json")
    with pytest.raises(ValueError, match="not an artifact record"):
        ArtifactRecord.from_dict({"key": "k"}, "y.json")


def test_study_meta_saves_only_changes_and_reads_the_attribute_names_of_earlier_versions(tmp_path):
    study = open_study(tmp_path, "s", optuna.samplers.RandomSampler(), ["maximize", "minimize"])
    study.set_user_attr("baseline_metric", 0.95)  # as earlier versions wrote it
    study.set_user_attr("opt_levels", ["extended", "all"])
    meta = StudyMeta.load(study)
    assert meta.baseline_metric == 0.95 and meta.opt_levels == ("extended", "all") and meta.maximize
    StudyMeta(uid="u", metric_name="loss", max_metric_drop=0.1, baseline_metric=0.95).save(study)
    again = StudyMeta.load(open_study(tmp_path, "s"))
    assert (again.uid, again.metric_name, again.metric_threshold()) == ("u", "loss", pytest.approx(0.85))


def test_every_precision_kind_has_a_builder_and_parses():
    from tuner.build.quantize import _BUILDERS
    from tuner.build.torch_runtime import TORCH_KINDS

    torch_kinds = {name for name, kind in TORCH_KINDS.items() if not kind.uniform_only and name != "fp32"}
    assert set(_BUILDERS) == set(KINDS) - torch_kinds  # the torch runtime's kinds: built by tuner.build.torch_runtime
    assert all(set(KINDS[name].op_types).isdisjoint({"Conv", "Gemm", "MatMul"}) for name in torch_kinds)
    assert parse("int4-b32") == (KINDS["int4"], 32) and family("int4-b128") == "int4"
    assert parse("int8-dynamic-pc") == (KINDS["int8-dynamic-pc"], None)
    for bad in ("int4", "int4-b7", "int8-b32", "fp12"):
        with pytest.raises(PrecisionError, match="cannot be built; choose from"):
            parse(bad)


def test_the_layer_plot_of_a_front_that_only_prunes_is_drawn(tmp_path):
    """A space with no precision choice left (every kind measured slower than fp32): pruning only."""
    from tuner.results.front import FrontRow
    from tuner.results.plots import layer_rows, plot_layers

    front = [FrontRow(0, 0.9, 1.0, summary="fp32"), FrontRow(3, 0.8, 0.6, summary="p")]
    rows = layer_rows(front, {0: {"prune.g1": 0.0, "opt_level": "all"}, 3: {"prune.g1": 0.5, "opt_level": "all"}})
    assert rows["layers"] == [] and rows["groups"] == ["g1"]
    plot_layers(rows, "accuracy", {0: 0.9, 3: 0.8}, tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 1000
