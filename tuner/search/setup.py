"""Setting a study up: the task loaded and the space resolved in the driver (every config error before any
trial), the study opened or continued, the auto space settled, the fp32 baseline measured and the references
queued."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna
import yaml

from tuner.build.layers import layer_op_types, quantizable_layers, untuned_layers
from tuner.core.errors import (
    SpaceError,
    StudyError,
    TaskError,
    UserCodeError,
)
from tuner.core.records import FULL, Fidelity, StudyMeta, TrialMeta, TrialResult
from tuner.core.stop import StopRequest
from tuner.core.storage import open_study
from tuner.executors.base import Executor, evaluate_all
from tuner.experiment import Experiment
from tuner.measure.memory import release_memory
from tuner.search.samplers import make_sampler, resolve_sampler
from tuner.space import SearchSpace, auto_space_file, load_space_file
from tuner.space.file import SpaceFile

# `seeding: {seeds: N}` queues N seeds from the predicted path (tuner.search.seeding). In experiments/search, on
# MiniLM's broad precision space a sensitivity pass and 8 seeds reached 0.92 and 1.00 of the union's hypervolume
# within 10 trials after the pass (25-31 trials' worth), where TPE alone reached 0.80 at 100 trials; on the digits
# CNN's pruning + precision space, pruning groups interact (a pair pruned together costs far more than the sum of
# each alone), the predicted path broke early, and seeding did no better than TPE for the pass's cost.
# `seeds: auto` (the default) is the plan instead (tuner.search.plan): built and measured mixes around the
# references, on any space.
PLAN = "plan"


def resolve_seeds(seeds: int | str) -> int | str:
    """What follows the references: ``PLAN``, a number of predicted-path seeds, or nothing (0)."""
    return PLAN if seeds == "auto" else int(seeds)


def prepare(experiment: Experiment, log: Callable[[str], None] = print):
    """Load the task and resolve the space in the driver: every config error surfaces before any trial."""
    from tuner.build.prune import broken_groups, broken_warnings, pruning_groups
    from tuner.task import check_forward

    # cheap checks first: the task may train a model
    space_file = None if experiment.auto_space else load_space_file(experiment.space_path)
    device = check_runtime(experiment, space_file)
    start = time.perf_counter()
    task = experiment.task_ref().load()
    check_forward(task, experiment.task)
    params = sum(p.numel() for p in task.model.parameters())
    log(f"task loaded in {time.perf_counter() - start:.1f} s: {type(task.model).__name__}, {params:,} "
        + (f"parameters; PyTorch's runtime on {device}" if device else
           "parameters; exporting it once to read its layers ..."))
    layer_ops = _layer_ops(experiment, task, space_file, log)
    untuned = untuned_layers(task.model)
    if untuned:
        log(untuned_line(untuned))
    groups = []
    if space_file is None or any(rule.prune is not None for rule in space_file.rules):
        try:
            groups = pruning_groups(task.model, task.example_inputs, task.output_layers)
        except Exception as exc:  # torch-pruning's tracer does not know every layer type
            why = f"torch-pruning cannot trace the channel dependencies of {type(task.model).__name__} " \
                  f"({type(exc).__name__}: {exc})"
            if space_file is not None:
                raise SpaceError(f"{experiment.space_path}: its rules prune, but {why}; remove 'prune' from the "
                                 "rules to search precision only.") from exc
            log(f"not pruned: {why}")
    if space_file is None:
        space_file = auto_space_file(f"{experiment.source}: search_space auto", layer_ops, groups,
                                     experiment.round_to)
    if device is not None:
        from tuner.search.torch_target import torch_space, unfit_layers

        space_file = torch_space(space_file, device, experiment.auto_space, log, unfit_layers(task.model))
    # GP models distances between points: it gets each layer's precision as an ordered integer, not a category
    ordered = resolve_sampler(experiment.sampler) == "gp"
    space = SearchSpace(space_file, layer_ops, groups, experiment.round_to, ordered_precision=ordered)
    # Groups pruned at their largest ratios: one that breaks the model is left out, not tried in every trial.
    largest = {name: max(values) for name, values in space.prune_choices.items() if max(values) > 0}
    start = time.perf_counter()
    broken = broken_groups(task.model, task.example_inputs, largest, task.output_layers, experiment.round_to)
    if largest:
        log(f"{len(largest)} pruning groups checked in {time.perf_counter() - start:.1f} s (pruned at their largest "
            "ratios and run)")
    for line in broken_warnings(broken, largest):
        log(line)
    if broken:
        space = SearchSpace(space_file, layer_ops, [g for g in groups if g.name not in broken], experiment.round_to,
                            left_out=set(broken), ordered_precision=ordered)
    check_finetune_hook(task, space, experiment)
    release_memory()  # the exports and pruned copies above are garbage now; keep the driver small
    return task, space


def check_runtime(experiment: Experiment, space_file: SpaceFile | None):
    """The torch runtime's device (None on ONNX Runtime), refused before any work if absent; a space file for the
    other runtime is refused too."""
    if experiment.runtime != "torch":
        if space_file is not None and space_file.fusion.torch_runtime:
            raise SpaceError(f"{space_file.path}: fusion: compile_mode is a choice of PyTorch's runtime, but the "
                             "experiment runs on onnxruntime; give it `runtime: torch`, or use opt_level.")
        return None
    from tuner.search.torch_target import check_device

    return check_device(experiment)


def _layer_ops(experiment: Experiment, task, space_file: SpaceFile | None, log: Callable[[str], None]
               ) -> dict[str, str]:
    """Each searched layer and what decides its choices: its op type in the ONNX export, or on PyTorch's runtime
    its module class."""
    if experiment.runtime == "torch":
        from tuner.search.torch_target import check_torch_rules, torch_layer_ops

        layer_ops = torch_layer_ops(task.model)
        if space_file is not None:
            check_torch_rules(space_file, layer_ops)
        return layer_ops
    start = time.perf_counter()
    layer_ops = layer_op_types(task.model, task.example_inputs, experiment.exporter, task.dynamic_axes)
    log(f"exported in {time.perf_counter() - start:.1f} s: {len(layer_ops)} layers to tune")
    unused = [name for name in quantizable_layers(task.model) if name not in layer_ops]
    if unused:
        log(f"not in the exported graph (output unused), not tuned: {', '.join(unused)}")
    return layer_ops


def untuned_line(untuned: list[tuple[str, str]]) -> str:
    """The layers kept fp32, by type, their names compacted (30 blocks' norms in a few words)."""
    from tuner.build.prune import compact_names

    kinds: dict[str, list[str]] = {}
    for name, kind in untuned:
        kinds.setdefault(kind, []).append(name)
    return ("kept fp32, not searched (tuner searches Conv2d, Linear, single-layer LSTM and, in decoders, Embedding layers): "
            + ", ".join(f"{compact_names(names)} ({kind})" for kind, names in kinds.items()))


def check_finetune_hook(task, space: SearchSpace, experiment: Experiment) -> None:
    """Recovery ``task`` calls the user's fine-tuning on pruned models: run it once on one, before any trial."""
    from tuner.build.prune import prune
    from tuner.build.recovery import RecoverySettings, recover

    if "task" not in space.recovery or not space.prune_choices:
        return
    if task.finetune is None:
        raise TaskError(f"task {experiment.task!r}: the search space offers recovery 'task', but the task has no "
                        "finetune hook (Task(finetune=...)).")
    name, values = next(iter(space.prune_choices.items()))
    model = prune(task.model, task.example_inputs, {name: max(values)}, task.output_layers, experiment.round_to)
    try:
        recover(model, task.model, "task", task.calibration_inputs, RecoverySettings(), task.finetune)
    except UserCodeError as exc:
        raise TaskError(f"task {experiment.task!r}: {exc}") from exc


def open_experiment_study(experiment: Experiment, space: SearchSpace, metric_name: str, direction: str,
                          log: Callable[[str], None] = print) -> tuple[optuna.Study, StudyMeta]:
    """The experiment's study (created, or continued with a sampler seeded past its trials) and what it
    records about itself; a continued study must have been created with the same search space."""
    run_dir = experiment.run_dir
    directions = [direction, "minimize"]
    # A resumed study gets a sampler seeded past the trials it has, or it would replay the first run's draws.
    n_before = len(open_study(run_dir, experiment.name, optuna.samplers.RandomSampler(), directions, log).trials)
    seed = None if experiment.seed is None else experiment.seed + n_before
    sampler = make_sampler(experiment.sampler, seed, canonical=lambda params: _candidate_or_none(space, params))
    study = open_study(run_dir, experiment.name, sampler, directions, log)
    meta = StudyMeta.load(study)
    signature = space_signature(space)
    # a study without trials has sampled nothing yet: it takes the space it is given
    if study.trials and (meta.space_signature or signature) != signature:
        raise StudyError(f"study {experiment.name!r} in {run_dir} was created with a different search space; "
                         "give the experiment a new name or remove that run directory.")
    ref = experiment.task_ref()
    meta = replace(meta, space_signature=signature, uid=meta.uid or uuid.uuid4().hex, metric_name=metric_name,
                   task=experiment.task, task_ref={"spec": ref.spec, "args": ref.args, "base_dir": ref.base_dir},
                   eval_settings=experiment.eval_settings().to_dict(), opt_levels=tuple(space.opt_levels),
                   max_metric_drop=experiment.max_metric_drop,
                   experiment_file=str(Path(experiment.source).resolve()) if experiment.source else
                   meta.experiment_file)
    meta.save(study)
    return study, meta


def _candidate_or_none(space: SearchSpace, params: dict):
    """The candidate ``params`` stand for; None for parameters of another space."""
    try:
        return space.decode(params)
    except (KeyError, ValueError, TypeError):
        return None


def space_signature(space: SearchSpace) -> str:
    return json.dumps({k: repr(v) for k, v in sorted(space.distributions().items())})




def settle_auto_space(study: optuna.Study, space: SearchSpace, executor: Executor, experiment: Experiment,
                      metric_name: str, log: Callable[[str], None], stop: StopRequest,
                      discard: Callable[[str], None]) -> SearchSpace:
    """A new study's ``search_space: auto``. With ``auto_kinds: measured``, fp32 and each kind's uniform model
    are built by the workers and timed by the meter the trials use, and the kinds not faster than fp32 there
    leave the space. Written to the run directory's ``space.yaml`` (a file to start your own from, with what
    was measured in its header), which a continued study reads back instead of measuring again."""
    from tuner.search.kinds import keep_fast, time_uniform_kinds

    header = [f"# generated by `tuner run` from {experiment.source or experiment.name} (search_space: auto, "
              f"auto_kinds: {experiment.auto_kinds}): every precision kind each layer's op type runs"
              + (" faster than fp32 here" if experiment.auto_kinds == "measured" else "")
              + ", pruning where the model is prunable"]
    if experiment.auto_kinds == "measured":
        log(f"measuring which precision kinds run faster than fp32 here: {len(space.references())} uniform "
            "models, built and timed (not scored) ...")
        start = time.perf_counter()
        timings = time_uniform_kinds(executor, space, stop)
        for timing in timings:
            log(f"  {timing.line(metric_name)}")
        left_out = [t.kind for t in timings if not t.kept]
        log(f"measured in {time.perf_counter() - start:.1f} s; "
            + (f"left out: {', '.join(left_out)}" if left_out else "every kind kept"))
        header += [f"# {timing.line(metric_name)}" for timing in timings]
        space = space.with_file(keep_fast(space.file, timings))
        for timing in timings:  # a kept kind's model is its reference trial's; a left-out one's goes
            if not timing.kept and timing.key:
                discard(timing.key)
    experiment.paths.auto_space.write_text("\n".join(header) + "\n"
                                                 + yaml.safe_dump(space.file.to_dict(), sort_keys=False))
    replace(StudyMeta.load(study), space_signature=space_signature(space),
            opt_levels=tuple(space.opt_levels)).save(study)
    return space


def screening(experiment: Experiment, meta: StudyMeta) -> Callable[[optuna.Trial], Fidelity]:
    """Each trial's fidelity: references always in full (they are measured side by side with everything);
    others screened on a subset first when the experiment asks for it and the study has a constraint."""
    threshold = meta.metric_threshold()
    if experiment.screening.samples is None or threshold is None:
        return lambda trial: FULL
    screened = Fidelity(experiment.screening.samples, True, threshold, meta.maximize, experiment.screening.z)
    return lambda trial: FULL if TrialMeta.of(trial).reference else screened


def measure_baseline(study: optuna.Study, space: SearchSpace, executor: Executor, experiment: Experiment,
                     log: Callable[[str], None], stop: StopRequest | None = None) -> TrialResult:
    """Build and measure the fp32 model (every layer fp32, unpruned, unfused; on PyTorch's runtime, eager), then
    queue the references: the front always contains or dominates them, since they are trials too."""
    stop = stop or StopRequest()
    log("measuring the fp32 baseline ...")
    _, result = next(evaluate_all(executor, {"baseline": space.baseline()}, stop=stop))
    if not result.completed:
        raise StudyError(f"the fp32 baseline of task {experiment.task!r} does not build or run: {result.error}")
    meta = replace(StudyMeta.load(study), baseline_metric=result.metric,
                   baseline_latency_ms=result.latency.median_ms)
    meta.save(study)
    log(f"fp32 baseline: {meta.metric_name}={result.metric:.4f}, latency={result.latency.median_ms:.3f} ms")
    for label, params in space.references():
        study.enqueue_trial(params, user_attrs={"reference": label})
    return result
