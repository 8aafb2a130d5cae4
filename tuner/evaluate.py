"""evaluate(candidate) = build the artifact, then measure that same artifact. What a worker runs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch_pruning as tp

from tuner.build.export import evict_exports, export_onnx, layer_weights, map_layers
from tuner.build.fusion import apply_transformer_fusions
from tuner.build.kernels import (
    check_nodes_survived,
    check_runnable,
    layer_kernels,
    mismatches,
)
from tuner.build.layers import quantizable_layers
from tuner.build.prune import prune
from tuner.build.quantize import apply_precisions
from tuner.build.recovery import RecoverySettings, recover
from tuner.core.candidate import Candidate
from tuner.core.disk import is_disk_full
from tuner.core.errors import UserCodeError, user_frame
from tuner.core.paths import MODEL
from tuner.core.precision import FP32
from tuner.core.records import FULL, ArtifactRecord, Fidelity, LatencyStats, TrialResult
from tuner.experiment import EvalSettings
from tuner.measure.environment import file_sha256, fingerprint
from tuner.measure.latency import artifact_feeds, measure_phases, phase_feeds
from tuner.measure.memory import peak_rss
from tuner.measure.quality import (
    TorchSession,
    score_all,
    score_subset,
    session_outputs,
    subset_indices,
)
from tuner.measure.runtime import create_session, load_artifact, run_metadata
from tuner.task import (
    Task,
    fit_to_declared,
    fits_inputs,
    graph_input_shapes,
    model_inputs,
)
from tuner.taskref import TaskRef


class Evaluator:
    """Holds one loaded task; evaluates candidates into ``artifact_root/<key>/``."""

    def __init__(self, task_ref: TaskRef, settings: EvalSettings, artifact_root: str | Path,
                 export_root: str | Path | None = None, task: Task | None = None):
        self.task_ref = task_ref
        self.task = task if task is not None else task_ref.load()  # `task`: already loaded from `task_ref`
        self.fingerprint = task_ref.fingerprint()
        self.settings = settings
        self.artifact_root = Path(artifact_root)
        # Pruned fp32 exports, built once per pruning configuration and shared by the candidates that use it.
        self.export_root = Path(export_root) if export_root else self.artifact_root / "_exports"
        self.layers = quantizable_layers(self.task.model)
        # the model's pruned copies take inputs of other shapes (a decoder's cache, fewer key/value heads): every
        # artifact gets the task's inputs cut to what its graph declares
        self._fits_inputs = fits_inputs(self.task.model)
        self._base_size: tuple[float, float] | None = None
        self._feeds: dict[str, np.ndarray] | None = None
        self._phase_feeds: dict[str, dict[str, np.ndarray]] | None = None
        self._reference_outputs: np.ndarray | None = None
        self._built_session: ort.InferenceSession | None = None  # see build(keep_session=)
        # (prune key, pruned model, its statistics): pruned for the screen, then exported (see _screen_pruned)
        self._held_pruned: tuple[str, torch.nn.Module, dict[str, Any]] | None = None

    def evaluate(self, candidate: Candidate | dict, fidelity: Fidelity = FULL) -> TrialResult:
        """Build, score and time in this process (what `tuner verify` does; the study splits the last step off).
        ``fidelity``: score a subset only, or leave the latency out (see :class:`Fidelity`)."""
        result = self.build_and_score(candidate, fidelity)
        if not result.completed or not fidelity.timed or result.screened_out:
            return result
        timings: dict[str, float] = {}
        memory = dict(result.memory)
        try:
            with _timed(timings, "latency"), peak_rss(memory, "meter"):
                model_path = Path(result.artifact_dir) / MODEL
                latency, environment = time_artifact(model_path, self.feeds(model_path), self.settings,
                                                     self.phase_feeds(model_path))
        except Exception as exc:
            return _failed(result.with_timings(**timings), "latency", exc)
        return replace(result, latency=latency, environment=environment, memory=memory).with_timings(**timings)

    def build_and_score(self, candidate: Candidate | dict, fidelity: Fidelity = FULL) -> TrialResult:
        """Build the artifact into ``artifact_root/<key>/`` and score it with the task's metric; no latency.
        ``fidelity.samples``: estimate the metric from that many evaluation samples (:func:`score_subset`),
        and with ``fidelity.threshold`` go on to the whole set unless the estimate is clearly infeasible.
        Records this process's peak RSS while doing so (``memory["build"]``)."""
        memory: dict[str, float] = {}
        with peak_rss(memory, "build"):
            result = self._build_and_score(candidate, fidelity)
        return replace(result, memory={**result.memory, **memory})

    def reference_outputs(self) -> np.ndarray:
        """The unpruned fp32 export's outputs on the whole evaluation set (computed once per evaluator)."""
        if self._reference_outputs is None:
            export_dir, _ = self._pruned_export(Candidate(), {})
            session = load_artifact(export_dir / "fp32.onnx", self.settings.threads)
            evaluation = self.task.evaluation
            self._reference_outputs = session_outputs(session, evaluation.inputs, evaluation.batch_size,
                                                      evaluation.reduce)
        return self._reference_outputs

    def _build_and_score(self, candidate: Candidate | dict, fidelity: Fidelity = FULL) -> TrialResult:
        if isinstance(candidate, dict):
            candidate = Candidate.from_dict(candidate)
        key = candidate.key(self.fingerprint)
        result = TrialResult(key=key, candidate=candidate.to_dict())
        timings: dict[str, float] = {}
        stage = "build"
        try:
            check_runnable(candidate)
            artifact = self.artifact_root / key
            cached_build = (artifact / MODEL).is_file()
            if fidelity.screens and not cached_build and self._prunes_anew(candidate):
                model = self._hold_pruned(candidate, timings)  # pruning is the build's first step, screened or not
                stage = "screen"
                estimate = self._screen_pruned(model, fidelity, timings)
                if estimate is not None:  # clearly infeasible as pruned: never exported, quantized or timed
                    return replace(result, metric=estimate[0], metric_stderr=estimate[1],
                                   scored_samples=fidelity.samples, screened_out=True,
                                   screened_before_build=True).with_timings(**timings)
                stage = "build"
            result = replace(result, artifact_dir=str(artifact))
            scoring = fidelity.samples != 0
            cached_export = False if cached_build else self.build(candidate, artifact, timings, keep_session=scoring)
            model_path = artifact / MODEL
            stats_file = self.export_root / candidate.prune_key(self.fingerprint) / "stats.json"
            result = replace(result, cached_build=cached_build, cached_export=cached_export,
                             size_mb=model_path.stat().st_size / 1e6, artifact_sha256=file_sha256(model_path),
                             model_stats=json.loads(stats_file.read_text()) if stats_file.is_file() else {})
            if fidelity.samples == 0:  # built, not scored (timing alone: `tuner.search.kinds`)
                return result.with_timings(**timings)
            stage = "accuracy"
            with _timed(timings, "accuracy"):
                # exactly as deployed: the kernel check's session of the file just built, or the file's own settings
                session = self._built_session or load_artifact(model_path, self.settings.threads)
                evaluation = self._evaluation_for(session)
                n_total = len(evaluation.inputs[0])
                samples = fidelity.samples
                if samples is not None and samples < n_total:
                    metric, stderr = score_subset(session, evaluation, self.reference_outputs(),
                                                  subset_indices(n_total, samples))
                    result = replace(result, metric=metric, scored_samples=samples, metric_stderr=stderr)
                    if fidelity.screens:  # a first look: stop only a clearly infeasible candidate
                        result = replace(result, screened_out=fidelity.clearly_infeasible(metric, stderr))
                        samples = n_total if not result.screened_out else samples
                if samples is None or samples >= n_total:  # the whole set (after a screen: it decides)
                    metric, extra = score_all(session, evaluation)
                    result = replace(result, metric=metric, extra_metrics=extra, scored_samples=None,
                                     metric_stderr=None)
        except Exception as exc:  # a broken candidate is a result (FAIL), not a crash of the study
            return _failed(result.with_timings(**timings), stage, exc)
        finally:
            self._built_session = None
            self._held_pruned = None
        return result.with_timings(**timings)

    def _prunes_anew(self, candidate: Candidate) -> bool:
        """Whether building the candidate starts by pruning the model (it prunes, and its export is not cached).
        Such a candidate is screened before its export (`_screen_pruned`); any other one on its artifact, which
        is cheap to build from a cached export."""
        return candidate.is_pruned and not (self._export_dir(candidate) / "layers.json").is_file()

    def _hold_pruned(self, candidate: Candidate, timings: dict[str, float]) -> torch.nn.Module:
        """Prune (and recover) the candidate's model and hold it for its export, which then does not prune again."""
        model, stats = self._pruned_model(candidate, timings)
        self._held_pruned = (candidate.prune_key(self.fingerprint), model, stats)
        return model

    def _screen_pruned(self, model: torch.nn.Module, fidelity: Fidelity, timings: dict[str, float]
                       ) -> tuple[float, float] | None:
        """A pruned candidate's first look, before its export: its pruned (and recovered) fp32 ``model``, scored in
        torch on the screening subset. Returns the estimate and its standard error if that is clearly infeasible
        (quantizing it would only move it further off: the screen assumes so); otherwise None."""
        evaluation = self.task.evaluation
        reference = self.reference_outputs()
        with _timed(timings, "screen"):
            estimate = score_subset(TorchSession(model, len(evaluation.inputs)), evaluation, reference,
                                    subset_indices(len(reference), fidelity.samples))
        return estimate if fidelity.clearly_infeasible(*estimate) else None

    def feeds(self, model_path: str | Path) -> dict[str, np.ndarray]:
        """The latency inputs by the artifact's input names (every candidate keeps the export's inputs; a pruned
        decoder's session cuts them to its cache: `tuner.measure.latency.session_feeds`)."""
        if self._feeds is None:
            self._feeds = artifact_feeds(self.task, model_path, self.settings.batch_size)
        return self._feeds

    def phase_feeds(self, model_path: str | Path) -> dict[str, dict[str, np.ndarray]]:
        """The task's further latency phases by the artifact's input names (``Task.latency_phases``)."""
        if self._phase_feeds is None:
            self._phase_feeds = phase_feeds(self.task, model_path)
        return self._phase_feeds

    def _evaluation_for(self, session: ort.InferenceSession):
        """The task's evaluation as the artifact of ``session`` takes its inputs (see ``_fits_inputs``)."""
        evaluation = self.task.evaluation
        if not self._fits_inputs:
            return evaluation
        return replace(evaluation, inputs=fit_to_declared(evaluation.inputs, [i.shape for i in session.get_inputs()]))

    def _calibration(self, source: Path, candidate: Candidate) -> list[list[np.ndarray]]:
        """The calibration batches as arrays, cut to the inputs of ``source`` (see ``_fits_inputs``; an unpruned
        export takes them whole, and its graph is not read)."""
        batches = [[t.numpy() for t in batch] for batch in self.task.calibration_inputs]
        if not self._fits_inputs or not candidate.is_pruned:
            return batches
        shapes = graph_input_shapes(onnx.load(str(source), load_external_data=False).graph)
        return [list(fit_to_declared(batch, shapes)) for batch in batches]

    def build(self, candidate: Candidate, artifact: Path, timings: dict[str, float], keep_session: bool = False
              ) -> bool:
        """(cached) prune + export -> transformer fusions -> per-layer precision, written atomically.

        Returns whether the pruned fp32 export came from the per-study cache. ``keep_session``: keep the kernel
        check's ORT session of the artifact for scoring it next (`_build_and_score`), instead of creating another.
        """
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        export_dir, cached = self._pruned_export(candidate, timings)
        tmp = Path(tempfile.mkdtemp(prefix=f".{artifact.name}.", dir=self.artifact_root))
        try:
            nodes = json.loads((export_dir / "layers.json").read_text())
            source = export_dir / "fp32.onnx"
            fused: dict[str, int] = {}
            if candidate.fusions:
                with _timed(timings, "fuse"):
                    result = apply_transformer_fusions(source, tmp / "fused.onnx", list(candidate.fusions))
                    fused, source = result.counts, tmp / "fused.onnx"
                    check_nodes_survived(result.nodes, nodes, candidate.fusions)
            with _timed(timings, "quantize"):
                choices = dict(candidate.precision)
                node_precision = {node: choices.get(layer, FP32) for layer, (node, _, _) in nodes.items()}
                quantized = any(c != FP32 for c in node_precision.values())
                calibration = self._calibration(source, candidate) if quantized else []
                # one load and one save of the model, its run settings stamped in before the save
                apply_precisions(source, tmp / MODEL, node_precision, calibration,
                                 calibration_cache=export_dir / "calibration",
                                 metadata=run_metadata(candidate, self.fingerprint))
                (tmp / "fused.onnx").unlink(missing_ok=True)
            with _timed(timings, "verify_kernels"):
                kernels, session = self._check_kernels(tmp, candidate, {layer: v[2] for layer, v in nodes.items()})
                self._built_session = session if keep_session else None
            ArtifactRecord(candidate.to_dict(), key=candidate.key(self.fingerprint), task=self.task_ref.spec,
                           task_fingerprint=self.fingerprint, fused_operators=fused, kernels=kernels,
                           layer_nodes={layer: v[0] for layer, v in nodes.items()},
                           layer_weights={layer: v[2] for layer, v in nodes.items()}).write(tmp / "candidate.json")
            try:
                os.rename(tmp, artifact)
            except OSError:  # another worker built the same key first; theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cached

    def weight_names(self, candidate: Candidate) -> dict[str, str]:
        """Each layer's weight initializer in the candidate's (pruned) export, exported if not cached."""
        export_dir, _ = self._pruned_export(candidate, {})
        return {layer: v[2] for layer, v in json.loads((export_dir / "layers.json").read_text()).items()}

    def _export_dir(self, candidate: Candidate) -> Path:
        return self.export_root / candidate.prune_key(self.fingerprint)

    def _pruned_model(self, candidate: Candidate, timings: dict[str, float]) -> tuple[torch.nn.Module, dict]:
        """The candidate's pruned (and recovered) torch model and its statistics; the one the screen held, if
        it pruned alike."""
        held, self._held_pruned = self._held_pruned, None
        if held is not None and held[0] == candidate.prune_key(self.fingerprint):
            return held[1], held[2]
        task = self.task
        with _timed(timings, "prune"):
            model = prune(task.model, task.example_inputs, dict(candidate.prune), task.output_layers,
                          self.settings.round_to, candidate.importance)
        stats: dict[str, Any] = {}
        if candidate.is_pruned and candidate.recovery != "none":
            with _timed(timings, "recover"):
                stats.update(recover(model, task.model, candidate.recovery, task.calibration_inputs,
                                     recovery_settings(self.settings, candidate), task.finetune))
        stats.update(self._size_stats(model))
        return model, stats

    def _pruned_export(self, candidate: Candidate, timings: dict[str, float]) -> tuple[Path, bool]:
        """The pruned fp32 ONNX model and its layer->node map, built once per pruning configuration."""
        export_dir = self._export_dir(candidate)
        if (export_dir / "layers.json").is_file():
            os.utime(export_dir / "layers.json")  # last use, for eviction
            return export_dir, True
        export_dir.parent.mkdir(parents=True, exist_ok=True)
        # named by this process (`.<key>.<pid>.*`): a worker killed mid-export leaves it to the next one to remove
        tmp = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.{os.getpid()}.", dir=export_dir.parent))
        try:
            task = self.task
            model, stats = self._pruned_model(candidate, timings)
            with _timed(timings, "export"), torch.no_grad():
                export_onnx(model, model_inputs(model, task.example_inputs), tmp / "fp32.onnx", self.settings.exporter,
                            task.dynamic_axes)
                nodes = map_layers(onnx.load(str(tmp / "fp32.onnx")), layer_weights(model, self.layers),
                                   allow_missing=True)
            (tmp / "layers.json").write_text(json.dumps({k: [v.name, v.op_type, v.weight] for k, v in nodes.items()}))
            (tmp / "stats.json").write_text(json.dumps(stats))
            try:
                os.rename(tmp, export_dir)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        evict_exports(self.export_root, keep=export_dir)
        return export_dir, False

    def _size_stats(self, model: torch.nn.Module) -> dict[str, Any]:
        """MACs and parameters of ``model`` and their ratios to the unpruned model (torch-pruning's counter)."""
        one = tuple(t[:1] for t in self.task.example_inputs)
        try:
            if self._base_size is None:
                self._base_size = tp.utils.count_ops_and_params(self.task.model, one)
            macs, params = tp.utils.count_ops_and_params(model, model_inputs(model, one))
        except Exception:  # counting is bookkeeping: a model it cannot trace still gets built and measured
            return {}
        return {"macs": float(macs), "params": float(params), "macs_ratio": float(macs) / self._base_size[0],
                "params_ratio": float(params) / self._base_size[1]}

    def _check_kernels(self, build_dir: Path, candidate: Candidate, weights: dict[str, str]
                       ) -> tuple[dict[str, str | None], ort.InferenceSession]:
        """Open the artifact as it will run (the run settings it was just stamped with) and check every layer got
        the kernel its precision asks for; returns the kernels and the session."""
        optimized = build_dir / "optimized.onnx"
        try:
            session = create_session(build_dir / MODEL, candidate.opt_level, self.settings.threads,
                                     str(optimized), candidate.disabled_optimizers)
            kernels = layer_kernels(onnx.load(str(optimized), load_external_data=False), weights)
        finally:
            optimized.unlink(missing_ok=True)
            optimized.with_name(optimized.name + ".data").unlink(missing_ok=True)
        wrong = mismatches(kernels, dict(candidate.precision))
        if wrong:
            raise RuntimeError(f"ORT does not run {len(wrong)} layer(s) as asked: " + "; ".join(wrong[:5]))
        return kernels, session


def time_artifact(model_path: str | Path, feeds: dict[str, np.ndarray], settings: EvalSettings,
                  phases: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> tuple[LatencyStats, dict[str, Any]]:
    """Latency of an artifact in a session opened as deployed (and of the task's further ``phases``, by name), and
    the fingerprint of where it was taken."""
    session = load_artifact(model_path, settings.threads)
    stats = measure_phases(session, feeds, phases or {}, settings.warmup, settings.repeats)
    return stats, fingerprint(settings.threads)


def recovery_settings(settings: EvalSettings, candidate: Candidate) -> RecoverySettings:
    """The experiment's distillation budget, times the candidate's ``recovery_budget``."""
    return RecoverySettings(settings.distill_steps, settings.distill_lr,
                            settings.recovery_time_limit_s).times(candidate.recovery_budget)


def _failed(result: TrialResult, stage: str, exc: Exception) -> TrialResult:
    """A FAIL result naming the stage, the line of the user's code (model, metric, hook) if that is where the
    exception came from, and the exception."""
    if isinstance(exc, UserCodeError):  # already names the task's code and where
        return result.failed(f"{stage} failed: {exc}", traceback.format_exc(limit=8))
    frame = user_frame(exc, fallback=False)
    at = f" (at {frame.filename}:{frame.lineno})" if frame else ""
    failed = result.failed(f"{stage} failed{at}: {type(exc).__name__}: {exc}", traceback.format_exc(limit=8))
    return replace(failed, disk_full=is_disk_full(exc))


@contextmanager
def _timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
