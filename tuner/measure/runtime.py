"""ONNX Runtime sessions, created the same way for tuning, `tuner pick` and deployment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from tuner.core.candidate import Candidate
from tuner.core.vocab import ORT_LEVELS

LEVELS = {name: getattr(ort.GraphOptimizationLevel, member) for name, member in ORT_LEVELS.items()}


@dataclass(frozen=True)
class RuntimeConfig:
    """How an artifact must be run; stored in the ONNX file's metadata (``tuner.runtime``)."""

    opt_level: str = "all"
    disabled_optimizers: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"opt_level": self.opt_level, "disabled_optimizers": list(self.disabled_optimizers)})

    @classmethod
    def of_file(cls, model_path: str | Path) -> RuntimeConfig:
        """Read the config stamped into an artifact; files without one run at the ORT default (all)."""
        model = onnx.load(str(model_path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        if "tuner.runtime" in props:
            data = json.loads(props["tuner.runtime"])
            return cls(data["opt_level"], tuple(data.get("disabled_optimizers", ())))
        return cls(props.get("tuner.opt_level", "all"))


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
        # weights go to a side file (``<name>.data``), so that reading the optimized graph back with
        # `onnx.load(..., load_external_data=False)` does not parse them (hundreds of MB on a large model)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         Path(optimized_model_path).name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return options


def create_session(model_path: str | Path, opt_level: str = "all", threads: int = 1,
                   optimized_model_path: str | None = None,
                   disabled_optimizers: tuple[str, ...] = ()) -> ort.InferenceSession:
    """A CPU session at ``opt_level`` with ``threads`` intra-op threads and some graph transformers off."""
    return ort.InferenceSession(
        str(model_path), session_options(opt_level, threads, optimized_model_path),
        providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers) or None,
    )


def load_artifact(model_path: str | Path, threads: int = 1, optimized_model_path: str | None = None
                  ) -> ort.InferenceSession:
    """A session configured exactly as the artifact was measured during tuning."""
    config = RuntimeConfig.of_file(model_path)
    return create_session(model_path, config.opt_level, threads, optimized_model_path, config.disabled_optimizers)


def run_metadata(candidate: Candidate, fingerprint: str) -> dict[str, str]:
    """What the ONNX file records of how it must be run, so the file alone tells a deployment."""
    runtime = RuntimeConfig(candidate.opt_level, candidate.disabled_optimizers)
    return {
        "tuner.runtime": runtime.to_json(),
        "tuner.opt_level": candidate.opt_level,
        "tuner.candidate": json.dumps(candidate.to_dict(), sort_keys=True),
        "tuner.task_fingerprint": fingerprint,
    }
