"""evaluate(candidate) = build the artifact, then measure that same artifact. What a worker runs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from tuner.build.export import export_onnx, layer_nodes
from tuner.build.prune import prune, recalibrate_batchnorm
from tuner.build.quantize import quantize_int8
from tuner.candidate import Candidate
from tuner.measure.latency import measure_latency
from tuner.measure.quality import score
from tuner.runtime import create_session
from tuner.space import quantizable_layers
from tuner.task import Task, TaskRef


@dataclass(frozen=True)
class EvalSettings:
    """How candidates are built and measured (from the experiment file)."""

    threads: int = 1
    batch_size: int = 1
    warmup: int = 10
    repeats: int = 50
    round_to: int = 8


@dataclass
class Outcome:
    """Plain-data result of one evaluation; crosses process boundaries as a dict."""

    key: str
    candidate: dict[str, Any]
    state: str = "COMPLETE"  # or "FAIL"
    error: str | None = None
    traceback: str | None = None
    metric: float | None = None
    latency: dict[str, float] = field(default_factory=dict)
    size_mb: float | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    artifact_dir: str | None = None
    cached_build: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_feeds(task: Task, input_names: list[str], batch_size: int) -> dict[str, np.ndarray]:
    """The example inputs, repeated or cut along the batch axis to ``batch_size``."""
    feeds = {}
    for name, tensor in zip(input_names, task.example_inputs):
        array = tensor.numpy()
        reps = -(-batch_size // len(array))
        feeds[name] = np.concatenate([array] * reps, axis=0)[:batch_size]
    return feeds


class Evaluator:
    """Holds one loaded task; evaluates candidates into ``artifact_root/<key>/``."""

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, artifact_root: str | Path):
        self.task_ref = task_ref
        self.task = task_ref.load()
        self.fingerprint = task_ref.fingerprint()
        self.settings = settings
        self.artifact_root = Path(artifact_root)
        self.layers = quantizable_layers(self.task.model)

    def evaluate(self, candidate: Candidate | dict) -> Outcome:
        if isinstance(candidate, dict):
            candidate = Candidate.from_dict(candidate)
        key = candidate.key(self.fingerprint)
        outcome = Outcome(key=key, candidate=candidate.to_dict())
        stage = "build"
        try:
            artifact = self.artifact_root / key
            outcome.artifact_dir = str(artifact)
            if (artifact / "model.onnx").is_file():
                outcome.cached_build = True
            else:
                self.build(candidate, artifact, outcome.timings)
            model_path = artifact / "model.onnx"
            outcome.size_mb = model_path.stat().st_size / 1e6
            stage = "accuracy"
            with _timed(outcome.timings, "accuracy"):
                session = create_session(model_path, candidate.opt_level, self.settings.threads)
                outcome.metric = score(session, self.task.evaluation)
            stage = "latency"
            with _timed(outcome.timings, "latency"):
                names = [i.name for i in session.get_inputs()]
                stats = measure_latency(session, latency_feeds(self.task, names, self.settings.batch_size),
                                        self.settings.warmup, self.settings.repeats)
                outcome.latency = stats.to_dict()
        except Exception as exc:  # a broken candidate is a result (FAIL), not a crash of the study
            outcome.state = "FAIL"
            outcome.error = f"{stage} failed: {type(exc).__name__}: {exc}"
            outcome.traceback = traceback.format_exc(limit=8)
        return outcome

    def build(self, candidate: Candidate, artifact: Path, timings: dict[str, float]) -> None:
        """prune -> BN recalibration -> ONNX -> int8 QDQ (fp32 layers excluded), written atomically."""
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{artifact.name}.", dir=self.artifact_root))
        try:
            task = self.task
            with _timed(timings, "prune"):
                model = prune(task.model, task.example_inputs, dict(candidate.prune), task.output_layers,
                              self.settings.round_to)
                if candidate.is_pruned:
                    recalibrate_batchnorm(model, task.calibration_inputs)
            with _timed(timings, "export"), torch.no_grad():
                export_onnx(model, task.example_inputs, tmp / "fp32.onnx")
            with _timed(timings, "quantize"):
                if candidate.int8_layers:
                    graph = onnx.load(str(tmp / "fp32.onnx"))
                    nodes = layer_nodes(graph, self.layers)
                    fp32_nodes = [nodes[n] for n in self.layers if n not in set(candidate.int8_layers)]
                    calibration = [[t.numpy() for t in batch] for batch in task.calibration_inputs]
                    quantize_int8(tmp / "fp32.onnx", tmp / "model.onnx", calibration, fp32_nodes)
                    (tmp / "fp32.onnx").unlink()
                else:
                    (tmp / "fp32.onnx").rename(tmp / "model.onnx")
                _stamp(tmp / "model.onnx", candidate, self.fingerprint)
            record = {"key": candidate.key(self.fingerprint), "task": self.task_ref.spec,
                      "task_fingerprint": self.fingerprint, "candidate": candidate.to_dict()}
            (tmp / "candidate.json").write_text(json.dumps(record, indent=2))
            try:
                os.rename(tmp, artifact)
            except OSError:  # another worker built the same key first; theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _stamp(path: Path, candidate: Candidate, fingerprint: str) -> None:
    """Record in the ONNX file how it must be run, so the file alone tells a deployment."""
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {
        "tuner.opt_level": candidate.opt_level,
        "tuner.candidate": json.dumps(candidate.to_dict(), sort_keys=True),
        "tuner.task_fingerprint": fingerprint,
    })
    onnx.save(model, str(path))


@contextmanager
def _timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
