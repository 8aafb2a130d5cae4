"""Which built models a run directory keeps (``keep_artifacts`` in the experiment), and what it holds on disk.

With ``front`` (the default) the driver keeps ``artifacts/<key>/`` only for the trials on the current Pareto
front and the reference trials. A trial that leaves the front can never come back to it (what dominates it
stays), so its folder is deleted as soon as it is dominated; ``tuner verify`` rebuilds any trial from its
candidate, byte for byte. ``all`` keeps every model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.core.records import TrialMeta
from tuner.core.vocab import KEEP_ARTIFACTS


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass(frozen=True)
class DiskUse:
    """What a study's run directory holds at its end."""

    run_dir_bytes: int
    models_kept: int
    models_deleted: int
    deleted_bytes: int
    policy: str

    def line(self) -> str:
        if self.policy == "all":
            return f"disk: run directory {self.run_dir_bytes / 1e6:.1f} MB ({self.models_kept} models, keep_artifacts: all)"
        return (f"disk: run directory {self.run_dir_bytes / 1e6:.1f} MB ({self.models_kept} model(s) kept: front and "
                f"references; {self.models_deleted} dominated model(s) deleted, {self.deleted_bytes / 1e6:.1f} MB; "
                "`tuner verify STUDY --trial N` rebuilds any of them)")


class ArtifactRetention:
    """A study-loop callback: after each finished trial, delete the models that are no longer needed."""

    def __init__(self, artifact_root: Path, policy: str = "front"):
        if policy not in KEEP_ARTIFACTS:
            raise ValueError(f"keep_artifacts must be one of {KEEP_ARTIFACTS}, but got {policy!r}.")
        self.artifact_root = Path(artifact_root)
        self.policy = policy
        self.deleted = 0
        self.deleted_bytes = 0

    def __call__(self, study: optuna.Study, finished=None) -> None:
        self.sweep(study)

    def sweep(self, study: optuna.Study) -> None:
        if self.policy == "all":
            return
        keep = kept_keys(study)
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        for key in {TrialMeta.of(t).key for t in trials} - keep - {""}:
            folder = self.artifact_root / key
            if folder.is_dir():
                self.deleted_bytes += folder_bytes(folder)
                shutil.rmtree(folder, ignore_errors=True)
                self.deleted += 1

    def remove_unfinished(self) -> int:
        """Remove what builds and writes that never finished left (a driver killed mid-build: ``.<key>.*``
        folders, ``.<file>.tmp`` files); only while no build runs for this study (at its start). Returns bytes."""
        if not self.artifact_root.is_dir():
            return 0
        left = [*self.artifact_root.glob(".*"), *self.artifact_root.glob("*/.*.tmp"),
                *self.artifact_root.glob("_exports/.*")]
        freed = 0
        for path in left:
            freed += folder_bytes(path) if path.is_dir() else path.stat().st_size
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return freed

    def discard(self, study: optuna.Study, key: str) -> None:
        """Delete the model of ``key`` (built outside any trial) unless a trial needs it."""
        folder = self.artifact_root / key
        if self.policy == "front" and key and key not in kept_keys(study) and folder.is_dir():
            self.deleted_bytes += folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
            self.deleted += 1

    def disk_use(self, run_dir: Path) -> DiskUse:
        kept = [p for p in self.artifact_root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))] \
            if self.artifact_root.is_dir() else []
        return DiskUse(folder_bytes(run_dir), len(kept), self.deleted, self.deleted_bytes, self.policy)


def kept_keys(study: optuna.Study) -> set[str]:
    """Artifact keys still needed: the front's, the references', and any a trial still running may share (the
    same parameters build the same key, and that trial's result may yet reach the front)."""
    keep = {TrialMeta.of(t).key for t in study.best_trials}
    running = {json.dumps(t.params, sort_keys=True)
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        meta = TrialMeta.of(trial)
        if meta.reference or json.dumps(trial.params, sort_keys=True) in running:
            keep.add(meta.key)
    return keep
