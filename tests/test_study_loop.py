"""The study loop's behaviour, fast: real Optuna journal, real MLflow sqlite store, real builds and ORT sessions,
evaluated by the in-process executor (no Ray). Nothing here asserts on a measured latency."""

import json
import re
import shutil
import textwrap
from pathlib import Path

import optuna
import pytest
from conftest import FAST_EXPORTER
from mlflow.tracking import MlflowClient

import tuner
from tuner.core.records import StudyMeta, TrialMeta, TrialResult
from tuner.core.storage import load_finished_study, open_study
from tuner.executors import InProcessExecutor
from tuner.results.tracking import MlflowRecorder
from tuner.space import load_space_file

SPACE = """
layers:
  - match: "4"
    precision: [fp32, int8]
  - match: "re:.*"
    precision: [fp32, int8]
    prune: {low: 0.0, high: 0.5, step: 0.25}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating its tables costs seconds); studies have their own names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def experiment(tmp_path, name, trials=4, fragile=False, max_drop=0.02, keep="front", task_args=None, extra="",
               space=SPACE):
    (tmp_path / "space.yaml").write_text(space)
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        task: tiny_mlp:make_task
        task_args: {json.dumps({"fragile": fragile, **(task_args or {})})}
        search_space: space.yaml
        trials: {trials}
        seed: 3
        max_metric_drop: {max_drop}
        front_every: 2
        keep_artifacts: {keep}
        latency: {{threads: 1, warmup: 1, repeats: 5}}
        {FAST_EXPORTER}
    """) + extra)
    return path


def run(path, tmp_path, store, **kwargs):
    return tuner.run(path, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
                     log=lambda line: None, **kwargs)


def trial_runs(store, name):
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tuner.role") == "study"]
    trials = {int(r.data.tags["tuner.trial_number"]): r for r in runs if r.data.tags.get("tuner.role") == "trial"}
    return parents, trials


def test_references_first_constraints_and_the_live_front(tmp_path, store):
    path = experiment(tmp_path, "loop")
    result = run(path, tmp_path, store)
    study = load_finished_study("loop", tmp_path / "runs")
    meta = StudyMeta.load(study)
    # the fp32 baseline is measured first; the references are the first trials, before the sampler's
    assert meta.has_baseline and meta.metric_name == "accuracy" and meta.max_metric_drop == 0.02
    assert [TrialMeta.of(t).reference for t in study.trials[:2]] == ["fp32", "uniform int8"]
    assert set(study.trials[0].params.values()) <= {"fp32", 0.0, "all"}
    # every completed trial carries its metric-drop constraint (<= 0 is feasible), which the front respects
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        drop = meta.baseline_metric - trial.values[0]
        assert trial.user_attrs["metric_drop"] == pytest.approx(drop)
        assert trial.system_attrs["constraints:metric_drop"] == pytest.approx(drop - 0.02)
    front = {t.number for t in study.best_trials}
    assert all(study.trials[n].user_attrs["metric_drop"] <= 0.02 for n in front)
    assert {r.trial for r in result.front} == front
    # MLflow: one parent, one run per trial, front tags and models, the live front logged every 2 trials
    parents, runs = trial_runs(store, "loop")
    assert len(parents) == 1 and sorted(runs) == [0, 1, 2, 3]
    assert {n for n, r in runs.items() if r.data.tags["tuner.pareto"] == "true"} == front
    client = MlflowClient(store)
    assert [m.step for m in client.get_metric_history(parents[0].info.run_id, "front_size")] == [2, 4]
    for number, run_ in runs.items():
        files = {f.path for f in client.list_artifacts(run_.info.run_id)}
        assert ("model.onnx" in files) == (number in front)
        assert TrialResult.from_dict(json.loads(Path(client.download_artifacts(
            run_.info.run_id, "outcome.json", str(tmp_path / f"dl{number}"))).read_text())).key == \
            study.trials[number].user_attrs["key"]
    assert len((tmp_path / "runs" / "loop" / "pareto.csv").read_text().strip().splitlines()) == 1 + len(front)
    assert result.n_complete == 4 and len(result.timings) == 4
    # the study run's description (what the MLflow UI shows on its page): the front linked to its runs, the
    # references, the constraint, what to run next
    note = parents[0].data.tags["mlflow.note.content"]
    experiment_id = parents[0].info.experiment_id
    linked = {int(n) for n in re.findall(r"\[(?:[a-z0-9 ]+ )?trial (\d+)\]\(#/experiments/\d+/runs/\w+\)", note)}
    assert linked >= front
    for number in front:
        assert f"](#/experiments/{experiment_id}/runs/{runs[number].info.run_id})" in note
    assert f"Pareto front of study `loop`: {len(front)} models" in note
    assert "[uniform int8 trial 1]" in note and "[fp32 trial 0]" in note
    assert f"accuracy >= {meta.baseline_metric - 0.02:.4f}" in note
    assert f"`tuner pick loop --min-accuracy {meta.baseline_metric - 0.02:.4f} --out model/`" in note


@pytest.mark.slow  # a whole study or two: in the full suite
def test_failed_candidates_are_recorded_and_the_study_goes_on(tmp_path, store):
    result = run(experiment(tmp_path, "fragile", trials=3, fragile=True), tmp_path, store)
    study = load_finished_study("fragile", tmp_path / "runs")
    # a failure is told PRUNED with the constraint `failed` violated: an infeasible point to the sampler
    states = ["FAIL" if t.user_attrs.get("fail_reason") else t.state.name for t in study.trials]
    assert len(states) == 3 and set(states) <= {"COMPLETE", "FAIL"}  # budget reached; nothing screened out
    assert states[0] == "COMPLETE" and states[1] == "FAIL"  # fp32 scores; uniform int8 drifts and fails
    assert study.trials[1].state.name == "PRUNED" and study.trials[1].constraints == {"failed": 1.0}
    assert "synthetic failure" in study.trials[1].user_attrs["fail_reason"]
    assert result.n_failed == states.count("FAIL")
    _, runs = trial_runs(store, "fragile")
    for number, state in enumerate(states):
        assert runs[number].data.tags["tuner.state"] == state
        if state == "FAIL":
            assert runs[number].info.status == "FAILED"
            assert "synthetic failure" in runs[number].data.tags["tuner.fail_reason"]
    assert {r.trial for r in result.front} <= {n for n, s in enumerate(states) if s == "COMPLETE"}

    # The run directory removed and the experiment run again: a new study with its own parent run in the
    # same MLflow experiment; the old study's runs stay as they were and are not adopted.
    shutil.rmtree(tmp_path / "runs" / "fragile")
    run(experiment(tmp_path, "fragile", trials=2, fragile=True), tmp_path, store)
    parents, _ = trial_runs(store, "fragile")
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("fragile").experiment_id
    trials = [r for r in client.search_runs([experiment_id], max_results=100) if r.data.tags.get("tuner.role") == "trial"]
    assert len(parents) == 2 and parents[0].data.tags["tuner.study_uid"] != parents[1].data.tags["tuner.study_uid"]
    per_parent = {p.info.run_id: sorted(int(r.data.tags["tuner.trial_number"]) for r in trials
                                        if r.data.tags["mlflow.parentRunId"] == p.info.run_id) for p in parents}
    assert sorted(per_parent.values()) == [[0, 1], [0, 1, 2]]


class _StopAfter(InProcessExecutor):
    """Stops the study like Ctrl-C once ``n`` results came back, with a candidate still submitted."""

    def __init__(self, n, *args):
        super().__init__(*args)
        self.n = n

    def results(self, timeout=1.0):
        if self.n == 0:
            raise KeyboardInterrupt
        finished = super().results(timeout)
        self.n -= len(finished)
        return finished


@pytest.mark.slow  # a whole study or two: in the full suite
def test_a_study_continues_after_a_dead_driver_or_a_stop_with_every_trial_recorded_once(tmp_path, store):
    from tuner.experiment import load_experiment
    from tuner.search.study import run_study

    path = experiment(tmp_path, "resume", trials=3)
    run(path, tmp_path, store)
    parents, runs = trial_runs(store, "resume")
    assert len(parents) == 1 and sorted(runs) == [0, 1, 2]

    # A driver that died: it had logged trial 3's MLflow run but not told Optuna; trial 4 had logged nothing.
    # Built from real parts: the study's own journal and MLflow store, trials left RUNNING in between.
    study = load_finished_study("resume", tmp_path / "runs")
    donor = study.trials[1]
    donor_result = TrialResult.from_dict(json.loads(Path(MlflowClient(store).download_artifacts(
        donor.user_attrs["mlflow_run_id"], "outcome.json", str(tmp_path / "dl"))).read_text()))
    study = open_study(tmp_path / "runs" / "resume", "resume", optuna.samplers.RandomSampler())
    logged = study.ask(fixed_distributions=donor.distributions)
    MlflowRecorder(store, "resume", "accuracy", study.user_attrs["uid"]).log_trial(
        logged.number, donor_result, donor.user_attrs["summary"])
    lost = study.ask(fixed_distributions=donor.distributions)
    assert (logged.number, lost.number) == (3, 4)

    # Continued, and stopped like Ctrl-C once one new result came back, with the next candidate in flight.
    exp = load_experiment(experiment(tmp_path, "resume", trials=8)).model_copy(
        update={"output_dir": str(tmp_path / "runs")})
    with pytest.raises(KeyboardInterrupt):
        run_study(exp, tracking_uri=store, progress=False, log=lambda line: None,
                  executor=lambda e, uid, task: _StopAfter(1, e.task_ref(), e.eval_settings(), e.run_dir / "artifacts"))
    study = load_finished_study("resume", tmp_path / "runs")
    # the logged trial is adopted from MLflow, not run again; the lost one is FAIL and queued again
    assert study.trials[3].state.name == "COMPLETE"
    assert study.trials[3].values == [donor_result.metric, donor_result.latency.median_ms]
    assert study.trials[4].state.name == "FAIL" and study.trials[4].user_attrs["interrupted"]
    # the stop leaves nothing RUNNING: the trial in flight is FAIL `interrupted`, its parameters queued again
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    stopped = [t for t in study.trials[5:] if t.user_attrs.get("interrupted")]
    assert len(stopped) == 1 and stopped[0].state.name == "FAIL"
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert stopped[0].params in [t.system_attrs["fixed_params"] for t in waiting]
    parents, runs = trial_runs(store, "resume")
    assert parents[0].info.status == "KILLED" and stopped[0].number not in runs and 4 not in runs

    # And run again: the budget is reached, with exactly one MLflow run per told trial under one parent.
    run(path, tmp_path, store, trials=8)
    study = load_finished_study("resume", tmp_path / "runs")
    counted = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(counted) == 8 and not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    parents, runs = trial_runs(store, "resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(runs) == sorted(t.number for t in counted)


def _model_folders(run_dir):
    return {p.name for p in (run_dir / "artifacts").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}


@pytest.mark.slow  # a whole study or two: in the full suite
def test_the_run_directory_keeps_front_and_reference_models_and_verify_rebuilds_the_others(tmp_path, store,
                                                                                        monkeypatch):
    # No metric drop allowed: a trial scoring below fp32 can never be on the front (the scores do not depend
    # on timing: same seed, same candidates, same builds).
    result = run(experiment(tmp_path, "retain", trials=8, max_drop=0.0), tmp_path, store)
    run_dir = tmp_path / "runs" / "retain"
    study = load_finished_study("retain", tmp_path / "runs")
    metas = {t.number: TrialMeta.of(t) for t in study.trials if t.state.name == "COMPLETE"}
    kept = {TrialMeta.of(t).key for t in study.best_trials} | {m.key for m in metas.values() if m.reference}
    assert _model_folders(run_dir) == kept
    dropped = [n for n, m in metas.items() if m.metric_drop > 0 and m.key not in kept]
    assert dropped, "expected a trial below the fp32 score"
    assert result.disk.models_kept == len(kept) and result.disk.models_deleted >= len(dropped)
    assert result.disk.run_dir_bytes > 0
    _, runs = trial_runs(store, "retain")
    for number in metas:  # every completed trial run records the peak memory of each process
        assert {"peak_rss_build_mb", "peak_rss_meter_mb", "peak_rss_driver_mb"} <= set(runs[number].data.metrics)
    assert set(result.peak_rss_mb) == {"build", "meter", "driver"}
    # the latency model: fitted from the reference trials' artifacts, each other trial predicted (values not
    # checked here: they are timings; experiments/latency_model measures the error)
    references = {n for n, m in metas.items() if m.reference}
    assert result.latency_model is not None and result.latency_model.references == len(references)
    saved = json.loads((run_dir / "latency_model.json").read_text())
    assert set(saved["trials"]) == {str(n) for n in metas if n not in references}
    assert set(saved["model"]["layer_ms"]) == set(json.loads(
        (run_dir / "artifacts" / metas[min(references)].key / "candidate.json").read_text())["layer_weights"])
    for number in metas:
        assert ("latency_predicted_ms" in runs[number].data.metrics) == (number not in references)

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the verifying process imports tiny_mlp
    report = tuner.verify("retain", dropped[0], tmp_path / "runs", store)
    assert report["rebuilt"] and report["artifact_sha256"]["same"] and report["metric"]["diff"] == 0

    result = run(experiment(tmp_path, "retain-all", trials=4, keep="all"), tmp_path, store)
    study = load_finished_study("retain-all", tmp_path / "runs")
    assert _model_folders(tmp_path / "runs" / "retain-all") >= {
        TrialMeta.of(t).key for t in study.trials if t.state.name == "COMPLETE"}  # and the fp32 baseline's
    assert result.disk.models_deleted == 0


@pytest.mark.slow  # a whole study or two: in the full suite
def test_seeds_from_sensitivity_and_the_latency_model_run_right_after_the_references(tmp_path, store):
    # layer 0 made fragile under int8 (tiny_mlp's outlier): the sensitivity pass must find it
    path = experiment(tmp_path, "seeded", trials=7, task_args={"outlier": 1e4},
                      extra="seeding: {seeds: 3, samples: 200}\n")
    lines = []
    tuner.run(path, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
              log=lines.append)
    study = load_finished_study("seeded", tmp_path / "runs")
    assert StudyMeta.load(study).seeded
    assert [TrialMeta.of(t).reference for t in study.trials[:2]] == ["fp32", "uniform int8"]
    seeds = [t for t in study.trials if t.user_attrs.get("seed")]
    assert 1 <= len(seeds) <= 3 and [t.number for t in seeds] == list(range(2, 2 + len(seeds)))
    for t in seeds:  # a seed predicted within the constraint never quantizes the fragile layer
        if t.user_attrs["seed_predicted_drop"] <= 0.02:
            assert t.params["precision.0"] == "fp32"
        else:
            assert t is seeds[-1]  # at most one seed past the constraint, the last
    assert len(study.trials) == 7
    cache = tmp_path / "runs" / "seeded" / "sensitivity.jsonl"
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {(r["group"], r["choice"]) for r in rows if r["kind"] == "precision"} == {("0", "int8"), ("2", "int8"),
                                                                                  ("4", "int8")}
    assert max((r for r in rows if r["kind"] == "precision"), key=lambda r: r["drop"])["group"] == "0"
    assert any("sensitivity: 7 probes in" in line and "queued one at a time along the path" in line
               for line in lines)
    # racing is on by default: the noise floor was measured once, on the baseline's model
    assert len(StudyMeta.load(study).noise_floor_ms) == 5 and any(line.startswith("noise floor:") for line in lines)
    parents, _ = trial_runs(store, "seeded")
    client = MlflowClient(store)
    assert {f.path for f in client.list_artifacts(parents[0].info.run_id, "sensitivity")} == {
        "sensitivity/sensitivity.md", "sensitivity/sensitivity.html", "sensitivity/sensitivity.jsonl"}
    assert parents[0].data.metrics["sensitivity_probes"] == 7

    lines.clear()  # continued: no second pass, no second set of seeds
    tuner.run(path, trials=8, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
              log=lines.append)
    study = load_finished_study("seeded", tmp_path / "runs")
    assert len(study.trials) == 8 and len([t for t in study.trials if t.user_attrs.get("seed")]) == len(seeds)
    assert not any(line.startswith("sensitivity") for line in lines)


def test_the_default_plan_follows_the_references_on_a_space_that_prunes_and_every_trial_records_its_stage(
        tmp_path, store):
    lines = []
    path = experiment(tmp_path, "planned", trials=6, task_args={"outlier": 1e4}, extra="seeding: {samples: 200}\n")
    tuner.run(path, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
              log=lines.append)
    study = load_finished_study("planned", tmp_path / "runs")
    assert StudyMeta.load(study).seeded and any(line.startswith("plan: ") for line in lines)
    stages = [TrialMeta.of(t).stage for t in study.trials]
    assert stages[:2] == ["reference", "reference"] and set(stages[2:]) <= {"plan", "sampler"}
    # which plan points there are depends on which reference the meter found faster (tests/test_plan.py builds
    # them with given latencies); each one says which point it is, and only the pruned point prunes
    plan = [t for t in study.trials if TrialMeta.of(t).stage == "plan"]
    assert all(TrialMeta.of(t).plan and t.params["pruned"] == TrialMeta.of(t).plan.startswith("prune ") for t in plan)
    _, runs = trial_runs(store, "planned")
    assert {n: r.data.tags["tuner.stage"] for n, r in runs.items()} == dict(enumerate(stages))
    assert all(r.data.tags["tuner.plan"] == TrialMeta.of(study.trials[n]).plan for n, r in runs.items()
               if r.data.tags["tuner.stage"] == "plan")


def test_a_candidate_far_below_the_constraint_is_screened_out_untimed_and_a_close_one_goes_on(tmp_path, store):
    path = experiment(tmp_path, "screened", trials=2, task_args={"outlier": 1e4}, extra="screening: {samples: 200}\n")
    run(path, tmp_path, store)  # the two references: always scored and timed in full
    study = load_finished_study("screened", tmp_path / "runs")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # uniform int8 too, broken as it is
    far = {**study.trials[0].params, "precision.0": "int8"}  # the layer the outlier makes fragile
    near = {**study.trials[0].params, "precision.4": "int8"}
    study.enqueue_trial(far)
    study.enqueue_trial(near)
    result = run(path, tmp_path, store, trials=4)
    study = load_finished_study("screened", tmp_path / "runs")
    screened, kept = study.trials[2], study.trials[3]
    assert screened.params == far and kept.params == near
    attrs = screened.user_attrs
    assert screened.state.name == "PRUNED" and attrs["screened_out"] and attrs["scored_samples"] == 200
    assert attrs["metric_drop"] > 0.02 + 3 * attrs["metric_stderr"]  # clearly infeasible, by its own error bar
    assert screened.system_attrs["constraints:metric_drop"] > 0  # the sampler sees an infeasible trial
    assert kept.state.name == "COMPLETE" and "screened_out" not in kept.user_attrs
    assert result.n_screened == 1 and result.n_complete == 3
    assert screened.number not in {t.number for t in study.best_trials}
    assert not (tmp_path / "runs" / "screened" / "artifacts" / attrs["key"]).exists()  # never timed, not kept
    _, runs = trial_runs(store, "screened")
    assert runs[2].data.tags["tuner.fidelity"].startswith("subset of 200 samples")
    assert "latency_ms" not in runs[2].data.metrics and "accuracy_stderr" in runs[2].data.metrics
    assert "latency_ms" in runs[3].data.metrics


@pytest.mark.slow  # a whole study or two: in the full suite
def test_an_auto_space_offers_the_kinds_timed_faster_than_fp32_and_a_continued_study_keeps_it(tmp_path, store):
    """Which kinds stay depends on timings, so the test checks that the space follows its own measurement."""
    path = tmp_path / "auto.yaml"
    path.write_text("name: auto\ntask: tiny_mlp:make_task\ntrials: 3\nseed: 0\nfront_every: 10\n"
                    "latency: {threads: 1, warmup: 1, repeats: 5}\n")
    lines = []
    tuner.run(path, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
              log=lines.append)
    saved = tmp_path / "runs" / "auto" / "space.yaml"
    header = [line for line in saved.read_text().splitlines() if line.startswith("# ")]
    assert "auto_kinds: measured" in header[0]
    measured = {line[2:].split(":")[0].removeprefix("uniform "): line for line in header[1:]}
    assert set(measured) == {"fp32", "int8"}  # the tiny MLP's Gemm layers: fp32 and static int8
    kept = {kind for kind, line in measured.items() if "left out" not in line}
    offered = {c for rule in load_space_file(saved).rules for c in rule.precision}
    assert "fp32" in kept and offered == kept
    assert any(line.startswith("measuring which precision kinds run faster than fp32") for line in lines)
    study = load_finished_study("auto", tmp_path / "runs")
    references = [TrialMeta.of(t).reference for t in study.trials if TrialMeta.of(t).reference]
    assert references == ["fp32"] + [f"uniform {k}" for k in sorted(kept - {"fp32"})]

    # continued: the saved space, not a new measurement
    before = saved.read_text()
    lines.clear()
    tuner.run(path, trials=4, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
              log=lines.append)
    assert not any(line.startswith("measuring which") for line in lines)
    assert saved.read_text() == before and len(load_finished_study("auto", tmp_path / "runs").trials) == 4


def test_a_candidate_pruned_far_past_the_constraint_is_screened_before_its_export(tmp_path, store):
    path = experiment(tmp_path, "screened-pruned", trials=2, extra="screening: {samples: 200}\n")
    run(path, tmp_path, store)  # the references
    study = load_finished_study("screened-pruned", tmp_path / "runs")
    unpruned = study.trials[0].params
    study.enqueue_trial({**unpruned, "pruned": True, "prune.0": 0.5, "prune.2": 0.5})  # half of each hidden layer: ~0.2 accuracy
    study.enqueue_trial({**unpruned, "pruned": True, "prune.0": 0.25, "prune.2": 0.25})  # within reach of the constraint
    result = run(path, tmp_path, store, trials=4)
    study = load_finished_study("screened-pruned", tmp_path / "runs")
    far, near = study.trials[2], study.trials[3]
    attrs = far.user_attrs
    assert far.state.name == "PRUNED" and attrs["screened_out"] and attrs["screened_before_build"]
    assert attrs["metric_drop"] > 0.02 + 3 * attrs["metric_stderr"] and attrs["scored_samples"] == 200
    assert far.system_attrs["constraints:metric_drop"] > 0  # the sampler sees an infeasible trial
    assert {"prune", "screen"} <= set(attrs["timings"]) and not {"export", "quantize"} & set(attrs["timings"])
    # the near one was screened the same way, passed, and was built from the model pruned for the screen
    assert "screened_out" not in near.user_attrs and near.state.name == "COMPLETE"
    assert {"prune", "screen", "export", "quantize"} <= set(near.user_attrs["timings"])
    assert result.n_screened == 1 and result.n_screened_before_build == 1
    _, runs = trial_runs(store, "screened-pruned")
    assert "before export and quantization" in runs[2].data.tags["tuner.fidelity"]
    assert "tuner.fidelity" not in runs[3].data.tags


def test_a_model_pruned_for_the_screen_builds_byte_identical_to_one_pruned_for_the_export(tmp_path):
    from tuner.core.records import Fidelity
    from tuner.evaluate import EvalSettings, Evaluator
    from tuner.taskref import TaskRef

    candidate = {"precision": {"0": "int8", "2": "int8"}, "prune": {"0": 0.25, "2": 0.25}}
    screen = Fidelity(samples=200, threshold=0.0, timed=False)  # a threshold every model passes
    results = {}
    for name, fidelity in (("screened", screen), ("direct", Fidelity(timed=False))):
        evaluator = Evaluator(TaskRef("tiny_mlp:make_task"), EvalSettings(exporter="torchscript"), tmp_path / name)
        results[name] = evaluator.build_and_score(candidate, fidelity)
        assert results[name].completed and not results[name].screened_out, results[name].error
    assert "screen" in results["screened"].timings and "screen" not in results["direct"].timings
    assert results["screened"].artifact_sha256 == results["direct"].artifact_sha256 is not None


def test_a_pruning_failure_is_a_build_failure_whether_or_not_the_candidate_is_screened(tmp_path, monkeypatch):
    import tuner.evaluate
    from tuner.core.records import Fidelity
    from tuner.evaluate import EvalSettings, Evaluator
    from tuner.taskref import TaskRef

    def broken_prune(*args, **kwargs):
        raise RuntimeError("no channel left to prune")

    monkeypatch.setattr(tuner.evaluate, "prune", broken_prune)
    candidate = {"prune": {"0": 0.25}}
    for name, fidelity in (("screened", Fidelity(samples=200, threshold=0.0, timed=False)),
                           ("direct", Fidelity(timed=False))):
        evaluator = Evaluator(TaskRef("tiny_mlp:make_task"), EvalSettings(exporter="torchscript"), tmp_path / name)
        result = evaluator.build_and_score(candidate, fidelity)
        assert result.state == "FAIL" and not result.screened_out
        assert result.error.startswith("build failed") and "RuntimeError: no channel left to prune" in result.error
