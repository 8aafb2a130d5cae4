"""Which precision kinds run faster than fp32 on this machine, decided by building and timing each kind's
uniform model (the study's references), not by a table: `tuner space --measure`."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace

from tuner.evaluate import Evaluator
from tuner.experiment import Experiment
from tuner.precision import FP32
from tuner.space import SearchSpace, SpaceFile


def keep_fast_kinds(space: SearchSpace, task, experiment: Experiment, log: Callable[[str], None] = print
                    ) -> tuple[SpaceFile, list[str]]:
    """The space file without the choices whose uniform model is not faster than the fp32 one here (or fails),
    and one line per reference saying what was measured."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="tuner-space-") as tmp:
        evaluator = Evaluator(experiment.task_ref(), experiment.eval_settings(), tmp, task=task)
        for label, params in space.references():
            log(f"measuring {label} ...")
            results[label] = evaluator.evaluate(space.decode(params))
    fp32 = results[FP32]
    if not fp32.completed:
        raise RuntimeError(f"the fp32 model does not build or run: {fp32.error}")
    lines, slow = [], set()
    for label, result in results.items():
        choice = label.removeprefix("uniform ")
        if not result.completed:
            slow.add(choice)
            lines.append(f"{label}: failed ({result.error.splitlines()[0][:120]}), left out")
            continue
        ratio = result.latency.median_ms / fp32.latency.median_ms
        kept = choice == FP32 or ratio < 1.0
        if not kept:
            slow.add(choice)
        lines.append(f"{label}: {result.latency.median_ms:.3f} ms ({ratio:.2f}x fp32), "
                     f"{task.evaluation.metric_name} {result.metric:.4f}" + ("" if kept else ", left out: not faster"))
    rules = tuple(replace(rule, precision=tuple(c for c in rule.precision if c not in slow) or (FP32,))
                  for rule in space.file.rules)
    return replace(space.file, rules=rules), lines
