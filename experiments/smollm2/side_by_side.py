"""What embedding.py and kv_groups.py share: candidates built through `tuner`'s own evaluator, then opened."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tuner.core.candidate import Candidate
from tuner.core.records import TrialResult
from tuner.evaluate import Evaluator
from tuner.measure.runtime import load_artifact


def build_all(evaluator: Evaluator, candidates: Mapping[str, Candidate]) -> tuple[dict[str, TrialResult], dict]:
    """Each candidate built, scored and timed as the study would (stopping at the first that fails), and an ORT
    session of each artifact (one thread), by label."""
    built = {}
    for label, candidate in candidates.items():
        result = evaluator.evaluate(candidate)
        if not result.completed:
            raise SystemExit(f"{label}: {result.error}")
        built[label] = result
        stats = result.model_stats
        distilled = (f"; distilled {stats['distill_steps']:.0f} steps, loss {stats['distill_loss_before']:.4g} -> "
                     f"{stats['distill_loss_after']:.4g}" if "distill_steps" in stats else "")
        print(f"built {label}: perplexity {result.metric:.3f}, {result.size_mb:.1f} MB "
              f"({sum(result.timings.values()):.0f} s){distilled}", flush=True)
    return built, {label: load_artifact(Path(r.artifact_dir) / "model.onnx", 1) for label, r in built.items()}
