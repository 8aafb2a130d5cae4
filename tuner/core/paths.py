"""What a study's run directory holds, named in one place: the journal, the settled `auto` space, and one folder
per built model under ``artifacts/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

JOURNAL = "optuna.journal"  # the Optuna storage: every trial, in the order the driver recorded it
AUTO_SPACE = "space.yaml"  # a study's `search_space: auto`, as measured when it started
ARTIFACTS = "artifacts"  # one folder per built model, named by the candidate's key
MODEL = "model.onnx"  # the built model in its artifact folder
# On PyTorch's runtime (`runtime: torch`): an AOTInductor package, or the rewritten module saved whole
TORCH_PACKAGE = "model.pt2"
TORCH_MODULE = "model.pt"
MODEL_FILES = (MODEL, TORCH_PACKAGE, TORCH_MODULE)


def model_file(folder: Path) -> Path:
    """The built model in an artifact folder, whichever runtime built it (``model.onnx`` when there is none)."""
    return next((folder / name for name in MODEL_FILES if (folder / name).is_file()), folder / MODEL)


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
        """The model file built for the candidate ``key`` (``model.onnx``, or the torch runtime's)."""
        return model_file(self.artifacts / key)
