"""Prefill and decode of a finished study's models, side by side in one process: the two numbers a chat user
waits for (time to the first token, then time per token), as tokens/s and as ratios to fp32.

    python experiments/smollm2/generation.py smollm2 --output-dir tuner-runs [--prompt 64] [--rounds 3]

Every front member and every reference whose artifact the run directory kept is timed: a 1 x N prompt with an
empty cache (prefill), then one token with that prompt's cache (decode), at batch 1 on one thread (the study's
latency settings). Models are timed in interleaved rounds (fp32, A, B, ..., fp32, A, B, ...), each round's
median kept, so that a slow spell of a shared machine falls on all of them alike; the ratios are medians over
rounds of the per-round ratios. Decode at batch 1 is memory-bound: what bounds it is the bytes of weights read
per token, printed beside it (fp32 / the artifact's size).
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import numpy as np

from tuner import api
from tuner.measure.generation import interleaved_generation, median_speedup
from tuner.measure.runtime import load_artifact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--output-dir", default="tuner-runs")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (prefill)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    table = api.front(args.study, args.output_dir)
    run_dir = Path(args.output_dir) / args.study
    rows = {r.trial: r for r in [*table.references, *table.rows]}
    models = {}
    for trial, row in sorted(rows.items()):
        path = run_dir / "artifacts" / row.key / "model.onnx"
        if path.is_file():
            models[trial] = (row, load_artifact(path, 1))
    if 0 not in models:
        print(f"error: the fp32 reference's artifact is not in {run_dir / 'artifacts'}", file=sys.stderr)
        return 1
    prompt = np.random.default_rng(0).integers(0, 49152, size=(1, args.prompt)).astype(np.int64)
    rounds = interleaved_generation({trial: session for trial, (_, session) in models.items()}, prompt, args.rounds,
                                    args.repeats)
    fp32_row = models[0][0]
    print(f"study {args.study!r}: prompt {args.prompt} tokens, batch 1, 1 thread, {args.rounds} interleaved rounds")
    print(f"{'trial':>5} {table.metric_name:>11} {'size MB':>8} {'prefill ms':>10} {'tok/s':>6} {'x fp32':>6} "
          f"{'decode ms':>9} {'tok/s':>6} {'x fp32':>6} {'fp32 bytes / size':>17}  what")
    for trial, (row, _) in models.items():
        prefill = np.median([r.prefill_ms for r in rounds[trial]])
        decode = np.median([r.decode_ms for r in rounds[trial]])
        prefill_x = median_speedup(rounds, 0, trial, "prefill_ms")
        decode_x = median_speedup(rounds, 0, trial, "decode_ms")
        what = row.reference or f"{row.stage}: {row.summary}"
        print(f"{trial:>5} {row.metric:>11.4f} {row.size_mb:>8.1f} {prefill:>10.1f} {args.prompt / prefill * 1e3:>6.0f} "
              f"{prefill_x:>5.2f}x {decode:>9.2f} {1e3 / decode:>6.1f} {decode_x:>5.2f}x "
              f"{fp32_row.size_mb / row.size_mb:>16.2f}x  {what[:90]}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process (every model loaded): {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
