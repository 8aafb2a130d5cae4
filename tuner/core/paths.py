"""What a study's run directory holds, named in one place: the journal, the settled `auto` space, and one folder
per built model under ``artifacts/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

JOURNAL = "optuna.journal"  # the Optuna storage: every trial, in the order the driver recorded it
AUTO_SPACE = "space.yaml"  # a study's `search_space: auto`, as measured when it started
ARTIFACTS = "artifacts"  # one folder per built model, named by the candidate's key
MODEL = "model.onnx"  # the built model in its artifact folder


@dataclass(frozen=True)
class RunPaths:
    """The files of one study's run directory."""

    root: Path

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL

    @property
    def auto_space(self) -> Path:
        return self.root / AUTO_SPACE

    @property
    def artifacts(self) -> Path:
        return self.root / ARTIFACTS

    def artifact(self, key: str) -> Path:
        """The folder of the model built for the candidate ``key``."""
        return self.artifacts / key

    def model(self, key: str) -> Path:
        """The ONNX file built for the candidate ``key``."""
        return self.artifacts / key / MODEL
