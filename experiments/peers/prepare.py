"""What every peer is given, written once per model by `tuner`'s own task (run in tuner's environment):

    work/<model>/fp32.onnx      the task's model exported by `tuner` (dynamic batch), the peers' starting point
    work/<model>/data.npz       evaluation inputs (by input name), calibration inputs (`cal:<name>`), the metric's
                                target (`target`: labels, or the fp32 model's outputs)
    work/<model>/meta.json      the metric (kind, fp32 value), the constraints, the latency settings

    python experiments/peers/prepare.py digits_cnn minilm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tuner.build.export import export_onnx
from tuner.experiment import load_experiment
from tuner.measure.quality import session_outputs
from tuner.tasks.digits_cnn import load_digits_split

HERE = Path(__file__).parent
# model -> (experiment file, the metric's kind as peer_common computes it, constraints as drops from fp32)
MODELS = {
    "digits_cnn": ("digits_cnn.yaml", "accuracy", (0.01, 0.005)),
    "minilm": ("minilm.yaml", "cosine", (0.02, 0.005)),
    "resnet50": ("resnet50.yaml", "cosine", (0.01, 0.005)),
}

# the labels of a task scored by accuracy, as its task builds them (the digits split's test labels)
TARGETS = {"digits_cnn": lambda: load_digits_split(32, 0)[3]}


def prepare(name: str, out: Path) -> None:
    config_file, kind, drops = MODELS[name]
    experiment = load_experiment(HERE / config_file)
    task = experiment.task_ref().load()
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(task.model, task.example_inputs, out / "fp32.onnx", dynamic_axes=task.dynamic_axes)
    session = ort.InferenceSession(str(out / "fp32.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    evaluation = task.evaluation
    reference = session_outputs(session, evaluation.inputs, evaluation.batch_size)
    target = TARGETS[name]() if name in TARGETS else reference
    calibration = {f"cal:{n}": np.concatenate([b[i].numpy() for b in task.calibration_inputs])
                   for i, n in enumerate(names)}
    np.savez(out / "data.npz", target=target, **dict(zip(names, evaluation.inputs)), **calibration)
    fp32 = float(evaluation.metric(reference))
    meta = {"model": name, "metric": evaluation.metric_name, "kind": kind, "fp32": fp32, "inputs": names,
            "constraints": [{"drop": d, "min": fp32 - d} for d in drops],
            "calibration_batch": len(task.calibration_inputs[0][0]), "eval_batch": evaluation.batch_size,
            "latency": {"threads": experiment.latency.threads, "batch_size": experiment.latency.batch_size}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"{name}: fp32 {evaluation.metric_name} {fp32:.4f}, {len(target)} evaluation samples, "
          f"{len(next(iter(calibration.values())))} calibration samples -> {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", choices=sorted(MODELS))
    parser.add_argument("--work", type=Path, default=HERE / "work")
    args = parser.parse_args()
    for model in args.models:
        prepare(model, args.work / model)
