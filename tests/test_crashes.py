"""Faults of long studies, with real files: a journal whose last record was cut off mid-write, two drivers on one
study, a full disk (before the study: too little free space; during it: an artifact write refused with ENOSPC).
Each recovers or stops with one clear line, and nothing already computed is lost."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from test_study_loop import experiment, run

import tuner
from tuner.cli import main
from tuner.core.disk import DiskShortfall
from tuner.core.driver_lock import DriverLock, StudyLocked
from tuner.core.journal import JournalError, check_journal
from tuner.core.records import TrialMeta
from tuner.core.storage import load_finished_study

TESTS = Path(__file__).parent
SPACE = "layers:\n  - match: 're:.*'\n    precision: [fp32, int8]\n"
NO_PLAN = "seeding: {seeds: 0}\n"  # a plain study: references, then the sampler


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _states(study):
    return [t.state.name for t in study.trials]


def test_a_torn_last_record_is_reported_cut_off_and_the_study_goes_on(tmp_path, store, capsys):
    path = experiment(tmp_path, "torn", trials=3, space=SPACE, extra=NO_PLAN)
    run(path, tmp_path, store)
    journal = tmp_path / "runs" / "torn" / "optuna.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-40])  # the driver killed in the middle of writing its last record
    kept = whole[:whole[:-40].rfind(b"\n") + 1]

    # readers answer from the last complete record, say so in one line, and leave the file alone
    assert len(tuner.front("torn", tmp_path / "runs").rows) >= 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was cut off mid-write and is ignored" in err[0]
    assert journal.read_bytes() == whole[:-40]

    # a driver cuts the fragment off (kept beside the journal), goes on, and finishes the budget; Optuna's lock
    # on the journal, left by the killed driver as Optuna makes it (a link to the journal's relative path), is
    # released instead of waited on
    os.symlink("runs/torn/optuna.journal", journal.parent / "optuna.journal.lock")
    lines = []
    tuner.run(path, trials=5, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
              log=lines.append)
    assert any("cut off mid-write and is moved to optuna.journal.torn" in line for line in lines)
    assert any("released the lock a stopped driver held on it" in line for line in lines)
    assert not (journal.parent / "optuna.journal.lock").is_symlink()
    assert (journal.parent / "optuna.journal.torn").read_bytes() == whole[len(kept):-40] + b"\n"
    assert journal.read_bytes().startswith(kept)  # nothing before the torn record was rewritten
    study = load_finished_study("torn", tmp_path / "runs")
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 5 and "RUNNING" not in _states(study) and "WAITING" not in _states(study)


def test_a_record_damaged_before_the_last_is_a_clear_error(tmp_path):
    journal = tmp_path / "optuna.journal"
    journal.write_bytes(b'{"op_code": 0}\n{"op_code": 4, "trial_id"{"op_code": 5}\n{"op_code": 6}\n')
    with pytest.raises(JournalError, match=r"optuna.journal: line 2 of 3 is not a complete record"):
        check_journal(journal, repair=True)
    assert check_journal(tmp_path / "absent.journal", repair=True) is None


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another driver: a process of its own that holds the study's lock until killed."""
    code = (f"from tuner.core.driver_lock import DriverLock\nimport time\n"
            f"with DriverLock({str(run_dir)!r}, 'locked', log=print):\n    print('held', flush=True)\n"
            "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_driver_is_refused_before_any_work_naming_the_holder(tmp_path, store):
    path = experiment(tmp_path, "locked", trials=2, space=SPACE, extra=NO_PLAN)
    run_dir = tmp_path / "runs" / "locked"
    holder = _holder(run_dir)
    try:
        env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        second = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(path), "--in-process", "--no-progress",
                                 "--output-dir", str(tmp_path / "runs"), "--tracking-uri", store],
                                capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    error = second.stderr.strip().splitlines()
    assert len(error) == 1 and f"pid {holder.pid}" in error[0] and "--workers" in error[0] and "--address" in error[0]
    assert not (run_dir / "optuna.journal").exists()  # refused before the study was opened

    # the holder is gone (its process exited): the next driver takes over and runs the study
    lines = []
    tuner.run(path, output_dir=tmp_path / "runs", tracking_uri=store, in_process=True, progress=False,
              log=lines.append)
    assert any(f"taking over from a driver that is gone (host {os.uname().nodename}, pid {holder.pid}" in line
               for line in lines)
    assert not (run_dir / "driver.lock").exists()  # released at the end


def test_a_holder_whose_heartbeat_stopped_is_taken_over_from_any_host(tmp_path):
    (tmp_path / "driver.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "earlier"}))
    with pytest.raises(StudyLocked, match="host elsewhere, pid 1"):
        DriverLock(tmp_path, "s", log=print).__enter__()  # pid 1 on another host: cannot tell, heartbeat fresh
    old = time.time() - 600
    os.utime(tmp_path / "driver.lock", (old, old))
    lines = []
    with DriverLock(tmp_path, "s", log=lines.append):
        assert json.loads((tmp_path / "driver.lock").read_text())["pid"] == os.getpid()
    assert "no heartbeat for" in lines[0]


def test_too_little_free_disk_is_one_line_with_the_numbers_before_any_build(tmp_path, store, monkeypatch):
    path = experiment(tmp_path, "small-disk", trials=2, space=SPACE, extra=NO_PLAN)
    monkeypatch.setattr("tuner.core.disk.free_bytes", lambda path: 1000)
    with pytest.raises(DiskShortfall, match=r"keeps up to 11 models of at most 0 MB .* about 0\.00 GB, and 0\.00 GB"):
        run(path, tmp_path, store)
    assert not (tmp_path / "runs" / "small-disk" / "artifacts").exists()


def test_a_write_refused_for_space_stops_the_study_and_resume_finishes_it(tmp_path, store, monkeypatch, capsys):
    """The third model's quantized file cannot be written: the study stops as on Ctrl-C, that trial is queued
    again (nothing half-written counted or left behind), and the study resumes to its budget."""
    import tuner.evaluate as evaluate

    path = experiment(tmp_path, "full-disk", trials=4, space=SPACE, extra=NO_PLAN)
    real, calls = evaluate.apply_precisions, []

    def full_disk(source, target, *args, **kwargs):
        calls.append(target)
        if len(calls) == 3:
            Path(target).write_bytes(b"half a model")
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(evaluate, "apply_precisions", full_disk)
    monkeypatch.chdir(tmp_path)  # the test modules are importable from there (conftest puts tests/ on the path)
    code = main(["run", str(path), "--in-process", "--no-progress", "--output-dir", str(tmp_path / "runs"),
                 "--tracking-uri", store])
    err = capsys.readouterr().err
    assert code == 130  # as for Ctrl-C
    assert "stopped: the disk is full" in err and "No space left on device" in err
    assert "tuner resume full-disk" in err
    study = load_finished_study("full-disk", tmp_path / "runs")
    stopped = [t for t in study.trials if TrialMeta.of(t).interrupted]
    assert len(stopped) == 1 and stopped[0].state == optuna.trial.TrialState.FAIL
    assert _states(study).count("WAITING") == 1 and "RUNNING" not in _states(study)
    artifacts = tmp_path / "runs" / "full-disk" / "artifacts"
    assert not [p for p in artifacts.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    monkeypatch.setattr(evaluate, "apply_precisions", real)
    result = run(path, tmp_path, store)
    study = load_finished_study("full-disk", tmp_path / "runs")
    assert result.n_complete == 4 and "WAITING" not in _states(study)


def test_what_killed_builds_left_is_removed_and_nothing_else(tmp_path):
    """Unfinished builds of a driver killed mid-build (run directory), and the folders of Ray workers killed
    mid-build (node-local scratch, named by their pid): removed once their process is gone."""
    from tuner.executors.ray_pools import remove_orphans
    from tuner.results.retention import ArtifactRetention

    artifacts = tmp_path / "artifacts"
    (artifacts / ".abc123.x7").mkdir(parents=True)
    (artifacts / ".abc123.x7" / "model.onnx").write_bytes(b"half")
    (artifacts / "def456").mkdir()
    (artifacts / "def456" / "model.onnx").write_bytes(b"whole")
    (artifacts / "def456" / ".candidate.json.tmp").write_bytes(b"ha")
    assert ArtifactRetention(artifacts).remove_unfinished() == 6
    assert [p.name for p in artifacts.rglob("*")] == ["def456", "model.onnx"]

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    scratch = tmp_path / "scratch"
    mine = os.getpid()
    for name in (f"worker-{gone}-ab", f"worker-{mine}-cd", f"_exports/.k1.{gone}.x", f"_exports/.k2.{mine}.y",
                 "_exports/k3", f"meter-{gone}-ef", f"meter-{mine}-gh"):
        (scratch / name).mkdir(parents=True)
    removed = remove_orphans(scratch)
    assert sorted(p.name for p in removed) == [f".k1.{gone}.x", f"meter-{gone}-ef", f"worker-{gone}-ab"]
    assert sorted(p.name for p in scratch.rglob("*")) == [f".k2.{os.getpid()}.y", "_exports", "k3",
                                                          f"meter-{os.getpid()}-gh", f"worker-{os.getpid()}-cd"]
