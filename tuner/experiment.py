"""The experiment file: one YAML per tuning job, validated before any expensive work.

Example (``experiments/digits_cnn/experiment.yaml``)::

    name: digits-cnn
    task: tuner.tasks.digits_cnn:make_task     # or path/to/file.py:function (relative to this file)
    task_args: {}
    search_space: ../../search_spaces/cnn_int8_prune.yaml   # or auto (the default): generated from the model
    auto_kinds: measured          # with auto: the kinds faster than fp32 here (timed first) | all
    trials: 60
    sampler: auto                 # auto (local: TPE, most trials near the feasible front) | tpe | nsga2 | gp | random
    seeding: {seeds: auto}        # auto: sensitivity pass + predicted front when the space prunes nothing | N
    seed: 0
    max_metric_drop: 0.01         # constraint against the fp32 baseline
    latency: {threads: 1, batch_size: 1, warmup: 10, repeats: 50}   # + resource: <Ray resource> on a cluster
    exporter: dynamo              # dynamo | torchscript (traces the branch the example takes)
    keep_artifacts: front         # front | all: which trials' models the run directory keeps
    runtime: onnxruntime          # onnxruntime (CPU) | torch: PyTorch's own runtime, on
    torch: {device: cuda, artifact: package}   # ... this device; an AOTInductor .pt2, or the module saved whole
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuner.core.errors import ExperimentError
from tuner.core.paths import RunPaths
from tuner.core.vocab import EXPORTERS, KEEP_ARTIFACTS, RUNTIMES, TORCH_ARTIFACTS
from tuner.core.yamlfile import read_mapping
from tuner.taskref import TaskRef


@dataclass(frozen=True)
class EvalSettings:
    """How candidates are built and measured (from the experiment file)."""

    threads: int = 1
    batch_size: int = 1
    warmup: int = 10
    repeats: int = 50
    round_to: int = 8
    distill_steps: int = 100
    distill_lr: float = 1e-4
    recovery_time_limit_s: float = 120.0
    exporter: str = "dynamo"
    runtime: str = "onnxruntime"
    device: str = "cpu"  # the torch runtime's device
    torch_artifact: str = "package"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LatencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threads: int = Field(1, ge=1, le=256)
    batch_size: int = Field(1, ge=1, le=4096)
    warmup: int = Field(10, ge=0)
    repeats: int = Field(50, ge=5)
    # A Ray resource that marks the machines to time on (the hardware you deploy to); builds run anywhere.
    resource: str | None = Field(None, min_length=1, max_length=100)


class TorchConfig(BaseModel):
    """PyTorch's runtime (``runtime: torch``): the device candidates are built and timed on, and what a candidate's
    artifact is: ``package``, an AOTInductor package (``model.pt2``: ``torch.export`` then compiled ahead of time),
    or ``module``, the rewritten module saved whole (``model.pt``), compiled in the candidate's mode when loaded
    (for models or torch builds where AOTInductor fails)."""

    model_config = ConfigDict(extra="forbid")
    device: Literal["cpu", "cuda"] = "cpu"
    artifact: Literal[TORCH_ARTIFACTS] = "package"


class RecoveryConfig(BaseModel):
    """Budget of the ``distill`` recovery after pruning (the method itself is a search-space choice)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(100, ge=1)
    lr: float = Field(1e-4, gt=0)
    time_limit_s: float = Field(120.0, gt=0)


class SeedingConfig(BaseModel):
    """What follows the references, before the sampler. ``auto`` (the default): the plan
    (:mod:`tuner.search.plan`): a sensitivity pass at the kinds it uses, then repaired and filled mixes, built and
    measured. ``N``: a sensitivity pass over every kind (:mod:`tuner.search.sensitivity`), the per-layer latency
    model from the references, then N candidates of the predicted front (:mod:`tuner.search.seeding`). 0: nothing,
    the sampler starts alone after the references."""

    model_config = ConfigDict(extra="forbid")
    seeds: Annotated[int, Field(ge=0, le=200)] | Literal["auto"] = "auto"
    # Evaluation samples per sensitivity probe at first (None: all of them); a probe whose estimate is not precise
    # enough for the constraint is scored again on the whole set (`tuner.sensitivity.target_stderr`)
    samples: int | None = Field(32, ge=8)
    mode: Literal["one_in", "one_out"] = "one_in"
    max_groups: int = Field(64, ge=1)  # more searched layers than this: one probe per block of layers


class ScreeningConfig(BaseModel):
    """Multi-fidelity: score each trial on ``samples`` evaluation samples first; a candidate whose estimate is
    worse than the constraint by more than ``z`` standard errors stops there (recorded PRUNED, never timed).
    ``samples: null`` (the default) scores every trial on the whole set at once."""

    model_config = ConfigDict(extra="forbid")
    samples: int | None = Field(None, ge=8)
    z: float = Field(3.0, gt=0)


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    task: str
    task_args: dict[str, Any] = {}
    search_space: str = "auto"  # a space file, or "auto": every kind each layer can run, pruning where prunable
    # With search_space auto: offer the kinds whose uniform model runs faster than fp32 here, timed before a new
    # study's first trial (measured), or every kind each layer's op type can run (all)
    auto_kinds: Literal["measured", "all"] = "measured"
    trials: int = Field(60, ge=1)
    sampler: Literal["auto", "local", "tpe", "nsga2", "gp", "random"] = "auto"  # auto: study.AUTO_SAMPLER
    seed: int | None = 0
    max_metric_drop: float | None = Field(0.01, ge=0)
    latency: LatencyConfig = LatencyConfig()
    round_to: int = Field(8, ge=1, le=256)
    output_dir: str = "tuner-runs"
    front_every: int = Field(10, ge=1)  # refresh the live front (files + MLflow) every N finished trials
    candidate_timeout_s: float | None = Field(1800.0, gt=0)  # a candidate running longer is FAIL, worker replaced
    retries: int = Field(1, ge=0)  # re-runs of a candidate whose worker died before FAIL
    pending_timeout_s: float = Field(120.0, gt=0)  # longest wait for a worker or a latency node to be placed
    stop_grace_s: float = Field(30.0, ge=0)  # on Ctrl-C/SIGTERM: how long trials in flight may take to finish
    recovery: RecoveryConfig = RecoveryConfig()
    seeding: SeedingConfig = SeedingConfig()
    screening: ScreeningConfig = ScreeningConfig()
    racing: bool = True  # a trial within the noise floor of a front member is re-timed beside it first
    # torch.export-based, or the TorchScript tracer for models that branch on tensor values (it follows the
    # branch the example input takes)
    exporter: Literal[EXPORTERS] = "dynamo"
    # Models kept in the run directory: those of the front and the references (any other is rebuilt by
    # `tuner verify`), or every trial's
    keep_artifacts: Literal[KEEP_ARTIFACTS] = "front"
    # Where candidates are built and timed: ONNX Runtime on this CPU, or PyTorch's own runtime (`torch`)
    runtime: Literal[RUNTIMES] = "onnxruntime"
    torch: TorchConfig = TorchConfig()

    # Set by load_experiment: where the file lives, for resolving relative paths.
    source: str = Field("", exclude=True)

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path(".")

    @property
    def auto_space(self) -> bool:
        return self.search_space == "auto"

    @property
    def space_path(self) -> Path:
        path = Path(self.search_space)
        return path if path.is_absolute() else self.base_dir / path

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def paths(self) -> RunPaths:
        """The run directory's files."""
        return RunPaths(self.run_dir)

    def task_ref(self) -> TaskRef:
        return TaskRef(self.task, dict(self.task_args), str(self.base_dir.resolve()))

    def eval_settings(self) -> EvalSettings:
        lat = self.latency
        rec = self.recovery
        return EvalSettings(lat.threads, lat.batch_size, lat.warmup, lat.repeats, self.round_to,
                            rec.steps, rec.lr, rec.time_limit_s, self.exporter, self.runtime, self.torch.device,
                            self.torch.artifact)


def load_experiment(path: str | Path) -> Experiment:
    path = str(path)
    data = read_mapping(path, "experiment", ExperimentError)
    try:
        experiment = Experiment.model_validate({**data, "source": path})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            value = err.get("input")
            problems.append(f"field '{field}': {err['msg']} (got {value!r})" if err["type"] != "missing"
                            else f"field '{field}': required but missing")
        raise ExperimentError(f"{path}: " + "; ".join(problems)) from None
    if not experiment.auto_space and not experiment.space_path.is_file():
        raise ExperimentError(f"{path}: field 'search_space': file {experiment.space_path} does not exist.")
    return experiment
