"""evaluate(candidate) on PyTorch's own runtime (``runtime: torch``): prune, rewrite each layer in its precision kind
(:mod:`tuner.build.torch_runtime`), compile it into the artifact a user deploys from PyTorch, then score and time
that same artifact on the experiment's device. What the in-process executor runs for such a study.

The artifact is an AOTInductor package (``model.pt2``: ``torch.export``, then compiled ahead of time, loaded back
with ``torch._inductor.aoti_load_package``), or with ``torch: {artifact: module}`` the rewritten module saved whole
(``model.pt``), run through ``torch.compile`` in the candidate's mode. With CUDA graphs on, each input shape is
captured once and replayed, for the metric and the latency alike.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from tuner.build.prune import prune
from tuner.build.recovery import recover
from tuner.build.torch_runtime import (
    apply_precision,
    compiled,
    cuda_graphed,
    load_package,
    matmul_precision,
    package,
)
from tuner.core.candidate import Candidate
from tuner.core.paths import TORCH_MODULE, TORCH_PACKAGE
from tuner.core.records import FULL, ArtifactRecord, Fidelity, TrialResult
from tuner.evaluate import Evaluator, _failed, _timed, recovery_settings
from tuner.experiment import EvalSettings
from tuner.measure.environment import file_sha256, package_versions
from tuner.measure.latency import latency_feeds
from tuner.measure.memory import peak_rss
from tuner.measure.quality import (
    score_all,
    score_subset,
    session_outputs,
    subset_indices,
)
from tuner.measure.torch_latency import time_callable
from tuner.task import (
    Task,
    declared_shapes,
    first_output,
    fit_to_declared,
    fits_inputs,
    model_inputs,
)
from tuner.taskref import TaskRef


class TorchSession:
    """A compiled candidate behind the two methods of an ORT session that scoring uses: numpy in (moved to the
    device), the first output back as float32 numpy."""

    def __init__(self, fn: Callable[..., Any], n_inputs: int, device: torch.device):
        self.fn, self.n_inputs, self.device = fn, n_inputs, device

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=f"input{i}") for i in range(self.n_inputs)]

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.fn(*(torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in feeds.values()))
        return [first_output(out).float().cpu().numpy()]


class GraphReplay:
    """``fn`` with each input shape captured once as a CUDA graph and replayed after (the metric's batches and the
    latency batch each get their own)."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self.fn = fn
        self.graphs: dict[tuple, Callable[..., torch.Tensor]] = {}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        shapes = tuple(tuple(x.shape) for x in inputs)
        if shapes not in self.graphs:
            self.graphs[shapes] = cuda_graphed(self.fn, inputs)
        return self.graphs[shapes](*inputs).clone()  # the captured output buffer is overwritten by the next replay


class TorchEvaluator:
    """Holds one loaded task; evaluates torch-runtime candidates into ``artifact_root/<key>/`` on
    ``settings.device``. The interface of :class:`tuner.evaluate.Evaluator` that the in-process executor uses."""

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, artifact_root: str | Path,
                 export_root: str | Path | None = None, task: Task | None = None):
        self.task_ref = task_ref
        self.task = task if task is not None else task_ref.load()
        self.fingerprint = task_ref.fingerprint()
        self.settings = settings
        self.device = torch.device(settings.device)
        self.artifact_root = Path(artifact_root)
        self._reference_outputs: np.ndarray | None = None
        self._pruned: tuple[str, torch.nn.Module, dict[str, Any]] | None = None  # the last pruned model, reused

    def evaluate(self, candidate: Candidate | dict, fidelity: Fidelity = FULL) -> TrialResult:
        """Build, score (``fidelity.samples``: on a subset; 0: not at all) and time (``fidelity.timed``)."""
        candidate = Candidate.from_dict(candidate) if isinstance(candidate, dict) else candidate
        key = candidate.key(self.fingerprint)
        result = TrialResult(key=key, candidate=candidate.to_dict())
        timings: dict[str, float] = {}
        memory: dict[str, float] = {}
        stage = "build"
        try:
            with peak_rss(memory, "build"):
                artifact = self.artifact_root / key
                cached = artifact.is_dir()
                # scored, not timed (the plan's sensitivity probes): built eagerly, not compiled. The metric is the
                # compiled model's up to float reassociation, and minutes of compilation per probe are saved
                eager = not fidelity.timed
                if not cached:
                    self.build(candidate, artifact, timings, eager)
                path = artifact_file(artifact)
                stats = json.loads((artifact / "stats.json").read_text())
                shapes = ArtifactRecord.read(artifact / "candidate.json").runtime.get("input_shapes")
                result = replace(result, artifact_dir=str(artifact), cached_build=cached,
                                 size_mb=path.stat().st_size / 1e6, artifact_sha256=file_sha256(path),
                                 model_stats=dict(stats))
                stage = "load"
                fn = self.load(replace(candidate, compile_mode="none", cuda_graphs=False) if eager else candidate,
                               path)
                if fidelity.samples != 0:
                    stage = "accuracy"
                    with _timed(timings, "accuracy"):
                        result = self._score(result, fn, fidelity, shapes)
            if fidelity.timed and not result.screened_out:
                stage = "latency"
                with _timed(timings, "latency"), peak_rss(memory, "meter"):
                    result = self._time(result, fn, candidate, shapes)
        except Exception as exc:  # a broken candidate is a result (FAIL), not a crash of the study
            return _failed(replace(result, memory=memory).with_timings(**timings), stage, exc)
        return replace(result, memory={**result.memory, **memory}).with_timings(**timings)

    def build(self, candidate: Candidate, artifact: Path, timings: dict[str, float], eager: bool = False) -> None:
        """Prune (and recover), rewrite the layers in their kinds, and write the artifact atomically (``eager``: the
        module, never a compiled package)."""
        model, stats = self._pruned_model(candidate, timings)
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{artifact.name}.", dir=self.artifact_root))
        try:
            with _timed(timings, "quantize"):
                model = apply_precision(copy.deepcopy(model), dict(candidate.precision), self.device)
                model = model.to(self.device).eval()
            runtime = self.runtime_record(candidate)
            if fits_inputs(self.task.model):  # a pruned decoder's cache: the shapes the artifact takes
                runtime["input_shapes"] = declared_shapes(self.task, model)
            with _timed(timings, "export"), torch.no_grad(), matmul_precision(_tf32(candidate)):
                if self.settings.torch_artifact == "package" and candidate.compile_mode != "none" and not eager:
                    runtime.update(self._package(model, tmp, candidate))
                else:
                    torch.save(model, tmp / TORCH_MODULE)
            ArtifactRecord(candidate.to_dict(), key=candidate.key(self.fingerprint), task=self.task_ref.spec,
                           task_fingerprint=self.fingerprint, runtime=runtime).write(tmp / "candidate.json")
            (tmp / "stats.json").write_text(json.dumps(stats))
            try:
                os.rename(tmp, artifact)
            except OSError:  # built by another evaluation first; theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _package(self, model: torch.nn.Module, folder: Path, candidate: Candidate) -> dict[str, str]:
        """The AOTInductor package; where torch.export or AOTInductor raise, the module saved whole (compiled when
        loaded) with the reason in the runtime record."""
        example = tuple(t.to(self.device) for t in model_inputs(model, self.task.example_inputs))
        try:
            package(model, example, folder / TORCH_PACKAGE, candidate.compile_mode)
            return {}
        except Exception as exc:  # a model export cannot take (data-dependent branches, ...): torch.compile instead
            (folder / TORCH_PACKAGE).unlink(missing_ok=True)
            torch.save(model, folder / TORCH_MODULE)
            return {"artifact": "module", "package_failed": f"{type(exc).__name__}: {str(exc)[:300]}"}

    def load(self, candidate: Candidate, path: Path) -> Callable[..., torch.Tensor]:
        """The artifact as a deployment runs it: the package loaded, or the module compiled; graphs replayed."""
        if path.name == TORCH_PACKAGE:
            fn = load_package(path)
        else:
            if candidate.compile_mode != "none":
                # each candidate is a new module for the same forward: without a reset, dynamo's guards pile up
                # until its recompile limit, past which it runs the candidate eagerly, unsaid
                torch._dynamo.reset()
            fn = compiled(torch.load(path, weights_only=False, map_location=self.device).eval(),
                          candidate.compile_mode)
        fn = _with_tf32(fn, _tf32(candidate)) if self.device.type == "cuda" else fn
        return GraphReplay(fn) if candidate.cuda_graphs else fn

    def runtime_record(self, candidate: Candidate) -> dict[str, Any]:
        """How the artifact must be run, written beside it (and into the picked model's card)."""
        return {"runtime": "torch", "device": self.settings.device, "artifact": self.settings.torch_artifact,
                "compile_mode": candidate.compile_mode, "cuda_graphs": candidate.cuda_graphs,
                "tf32": candidate.tf32}

    def reference_outputs(self) -> np.ndarray:
        """The fp32 eager model's outputs on the whole evaluation set (what subsets are estimated against)."""
        if self._reference_outputs is None:
            evaluation = self.task.evaluation
            session = TorchSession(copy.deepcopy(self.task.model).to(self.device).eval(), len(evaluation.inputs),
                                   self.device)
            with matmul_precision({}):  # fp32 as trained: TF32 off for cuDNN too
                self._reference_outputs = session_outputs(session, evaluation.inputs, evaluation.batch_size,
                                                          evaluation.reduce)
        return self._reference_outputs

    def _score(self, result: TrialResult, fn: Callable[..., torch.Tensor], fidelity: Fidelity,
               shapes: list | None = None) -> TrialResult:
        """The metric (``shapes``: the inputs the artifact takes, where they differ from the task's)."""
        evaluation = self.task.evaluation
        if shapes:
            evaluation = replace(evaluation, inputs=fit_to_declared(evaluation.inputs, shapes))
        session = TorchSession(fn, len(evaluation.inputs), self.device)
        n_total, samples = len(evaluation.inputs[0]), fidelity.samples
        if samples is not None and samples < n_total:
            metric, stderr = score_subset(session, evaluation, self.reference_outputs(),
                                          subset_indices(n_total, samples))
            result = replace(result, metric=metric, scored_samples=samples, metric_stderr=stderr)
            if fidelity.screens:
                result = replace(result, screened_out=fidelity.clearly_infeasible(metric, stderr))
                samples = n_total if not result.screened_out else samples
        if samples is None or samples >= n_total:
            metric, extra = score_all(session, evaluation)
            result = replace(result, metric=metric, extra_metrics=extra, scored_samples=None, metric_stderr=None)
        return result

    def _time(self, result: TrialResult, fn: Callable[..., torch.Tensor], candidate: Candidate,
              shapes: list | None = None) -> TrialResult:
        """Latency at the experiment's batch size on the device (CUDA events on a GPU), and the peak GPU memory."""
        names = [f"input{i}" for i in range(len(self.task.example_inputs))]
        feeds = latency_feeds(self.task, names, self.settings.batch_size)
        feeds = dict(zip(feeds, fit_to_declared(list(feeds.values()), shapes or [None] * len(feeds))))
        inputs = [torch.from_numpy(a).to(self.device) for a in feeds.values()]
        threads = torch.get_num_threads()
        torch.set_num_threads(self.settings.threads)
        try:
            timing = time_callable(fn, inputs, self.settings.warmup, self.settings.repeats)
        finally:
            torch.set_num_threads(threads)
        extra = dict(result.extra_metrics)
        if timing.peak_memory_mb is not None:
            extra["gpu_peak_mb"] = timing.peak_memory_mb
        return replace(result, latency=timing.latency, environment=self.environment(), extra_metrics=extra)

    def environment(self) -> dict[str, Any]:
        device = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                  else platform.processor() or platform.machine())
        return {"runtime": "torch", "device": str(self.device), "device_name": device, "threads": self.settings.threads,
                "batch_size": self.settings.batch_size, "cores": os.cpu_count(), **package_versions(),
                "torch": torch.__version__}

    def _pruned_model(self, candidate: Candidate, timings: dict[str, float]) -> tuple[torch.nn.Module, dict]:
        """The candidate's pruned (and recovered) fp32 model on the CPU; the last one is kept for the next candidate
        that prunes alike."""
        prune_key = candidate.prune_key(self.fingerprint)
        if self._pruned is not None and self._pruned[0] == prune_key:
            return self._pruned[1], self._pruned[2]
        task = self.task
        with _timed(timings, "prune"):
            model = prune(task.model, task.example_inputs, dict(candidate.prune), task.output_layers,
                          self.settings.round_to, candidate.importance)
        stats: dict[str, Any] = {"params": float(sum(p.numel() for p in model.parameters()))}
        if candidate.is_pruned and candidate.recovery != "none":
            with _timed(timings, "recover"):
                stats.update(recover(model, task.model, candidate.recovery, task.calibration_inputs,
                                     recovery_settings(self.settings, candidate), task.finetune))
        self._pruned = (prune_key, model, stats)
        return model, stats


def artifact_file(folder: Path) -> Path:
    """The torch artifact in a candidate's folder: the package, or the saved module."""
    package_path = folder / TORCH_PACKAGE
    return package_path if package_path.is_file() else folder / TORCH_MODULE


def _tf32(candidate: Candidate) -> dict[str, str]:
    """What :func:`matmul_precision` reads: TF32 on for every layer, or for none."""
    return {"model": "tf32"} if candidate.tf32 else {}


def _with_tf32(fn: Callable[..., torch.Tensor], precision: dict[str, str]) -> Callable[..., torch.Tensor]:
    """``fn`` with TF32 set as the candidate asks on every call: off unless asked (PyTorch's own default turns it
    on for cuDNN convolutions, which would make an fp32 model TF32 unasked)."""
    def call(*inputs: torch.Tensor) -> torch.Tensor:
        with matmul_precision(precision):
            return fn(*inputs)
    return call


def evaluator_class(settings: EvalSettings) -> type:
    """The evaluator of the experiment's runtime: :class:`TorchEvaluator`, or ONNX Runtime's
    :class:`tuner.evaluate.Evaluator`."""
    return TorchEvaluator if settings.runtime == "torch" else Evaluator
