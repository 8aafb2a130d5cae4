"""The embedding table in 4 bits: what it changes on a pretrained decoder, side by side in one process.

    python experiments/smollm2/embedding.py [--task tuner.tasks.smollm2:make_task] [--rounds 3] [--out DIR]

Builds fp32, uniform 8-bit weight-only (every MatMul, the head included), the same with the embedding table in
4 bits (ORT's GatherBlockQuantized), and uniform 4-bit with the table fp32 and in 4 bits, through `tuner`'s own
evaluator (the study's build, kernel check and perplexity); then times each artifact's prefill (64-token prompt)
and decode step (one token after it) in interleaved rounds, as experiments/smollm2/generation.py does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from side_by_side import build_all, time_and_print  # beside this script

from tuner.build.layers import layer_op_types
from tuner.core.candidate import Candidate
from tuner.evaluate import EvalSettings, Evaluator
from tuner.taskref import TaskRef


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="tuner.tasks.smollm2:make_task")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--out", help="keep the artifacts here (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="tuner-embedding-"))
    evaluator = Evaluator(TaskRef(args.task, {}, "."), EvalSettings(threads=1, batch_size=1, warmup=2, repeats=5),
                          root)
    task = evaluator.task
    ops = layer_op_types(task.model, task.example_inputs, dynamic_axes=task.dynamic_axes)
    matmuls = [name for name, op in ops.items() if op == "MatMul"]
    tables = [name for name, op in ops.items() if op == "Gather"]

    def uniform(kind: str, with_tables: bool) -> Candidate:
        layers = matmuls + (tables if with_tables else [])
        return Candidate(precision=tuple((name, kind) for name in layers) + tuple(
            (name, "int4-b32") for name in tables if with_tables and kind != "int4-b32"))

    candidates = {
        "fp32": Candidate(),
        "int8-weight-b32, table fp32": uniform("int8-weight-b32", False),
        "int8-weight-b32, table int4-b32": uniform("int8-weight-b32", True),
        "int4-b32, table fp32": uniform("int4-b32", False),
        "int4-b32, table int4-b32": uniform("int4-b32", True),
    }
    built, sessions = build_all(evaluator, candidates)
    print(args.task)
    time_and_print(built, sessions, np.asarray(task.evaluation.inputs[0][:1, :args.prompt]), args.rounds)


if __name__ == "__main__":
    main()
