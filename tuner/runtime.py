"""ONNX Runtime sessions, created the same way for tuning, `tuner pick` and deployment."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(opt_level: str, threads: int = 1, optimized_model_path: str | None = None) -> ort.SessionOptions:
    if opt_level not in LEVELS:
        raise ValueError(f"opt_level must be one of {list(LEVELS)}, but got {opt_level!r}.")
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[opt_level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    return options


def create_session(model_path: str | Path, opt_level: str = "all", threads: int = 1,
                   optimized_model_path: str | None = None) -> ort.InferenceSession:
    """A CPU session at ``opt_level`` with ``threads`` intra-op threads."""
    return ort.InferenceSession(
        str(model_path), session_options(opt_level, threads, optimized_model_path), providers=["CPUExecutionProvider"]
    )
