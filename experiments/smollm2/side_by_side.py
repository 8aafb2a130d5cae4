"""What embedding.py and kv_groups.py share: candidates built through `tuner`'s own evaluator, then timed side by
side and printed as one table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tuner.core.candidate import Candidate
from tuner.core.records import TrialResult
from tuner.evaluate import Evaluator
from tuner.measure.generation import interleaved_generation, median_speedup
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


def time_and_print(built: Mapping[str, TrialResult], sessions: Mapping, prompt: np.ndarray, rounds: int) -> None:
    """Prefill of ``prompt`` and one decode step after it, every session once per round in turn, and the table:
    each model's perplexity, agreement with fp32, size and speed, as ratios over ``"fp32"`` taken in each round."""
    timed = interleaved_generation(sessions, prompt, rounds)
    fp32 = built["fp32"]
    print(f"prompt {prompt.shape[1]} tokens, batch 1, 1 thread, {rounds} interleaved rounds")
    print(f"{'model':<40} {'perplexity':>10} {'agreement':>9} {'size MB':>8} {'fp32/size':>9} {'prefill x':>9} "
          f"{'decode ms':>9} {'decode x':>8}")
    for label, result in built.items():
        decode = np.median([r.decode_ms for r in timed[label]])
        agreement = result.extra_metrics.get("next_token_agreement", float("nan"))
        print(f"{label:<40} {result.metric:>10.3f} {agreement:>9.3f} {result.size_mb:>8.1f} "
              f"{fp32.size_mb / result.size_mb:>8.2f}x {median_speedup(timed, 'fp32', label, 'prefill_ms'):>8.2f}x "
              f"{decode:>9.2f} {median_speedup(timed, 'fp32', label, 'decode_ms'):>7.2f}x")
