"""Qualcomm AIMET for ONNX (aimet-onnx 2.42): Auto Mixed Precision as its documentation runs it. A quantization
simulation (int8 weights and activations, min-max encodings from the calibration set; its dummy inputs are the
first calibration batch: its own random ones index token ids out of an embedding's range), then `choose_mixed_precision`
over two candidates per quantizer group (W8A8 int, W16A16 float): phase 1 ranks the groups by the metric, phase 2
walks the Pareto curve of metric against bit-operations until the allowed drop. The chosen mix is exported as
ONNX QDQ (`to_onnx_qdq`), the form ONNX Runtime runs on a CPU. One AMP run per constraint.

``--phase1-samples N``: phase 1 scores on the first N evaluation samples, as AIMET's documentation suggests for
phase 1 (its ``eval_callback_for_phase1`` "can be a smaller dataset"); phase 2 on the whole set. Phase 1's results
are kept in ``work/<model>/aimet/amp`` and a second run starts from them.

    experiments/peers/.venvs/aimet/bin/python experiments/peers/aimet_run.py experiments/peers/work/digits_cnn
"""

import argparse
import sys
import time
import traceback
from pathlib import Path

import onnx
from aimet_onnx import utils as aimet_utils
from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
from aimet_onnx.mixed_precision import choose_mixed_precision
from aimet_onnx.quantsim import QuantizationSimModel

sys.path.insert(0, str(Path(__file__).parent))
from peer_common import Prepared, record  # noqa: E402

CANDIDATES = [((8, QuantizationDataType.int), (8, QuantizationDataType.int)),
              ((16, QuantizationDataType.float), (16, QuantizationDataType.float))]


def calibrate(session, batches) -> None:
    for batch in batches:
        session.run(None, batch)


def main(folder: Path, phase1_samples: int | None = None) -> None:
    prepared = Prepared(folder)
    out = folder / "aimet"
    out.mkdir(exist_ok=True)
    started = time.time()
    calibration = prepared.calibration_batches()
    # AMP counts each layer's MACs by running the model on `aimet_onnx.utils.make_dummy_input` (random values, not
    # configurable): on a text encoder those index token-type embeddings out of range. It runs on calibration data.
    aimet_utils.make_dummy_input = lambda *args, **kwargs: calibration[0]
    models, notes = [], []
    for constraint in prepared.meta["constraints"]:
        drop = constraint["drop"]
        try:
            sim = QuantizationSimModel(onnx.load(str(prepared.fp32_path)), param_type="int8", activation_type="int8",
                                       providers=["CPUExecutionProvider"], dummy_input=calibration[0])
            sim.compute_encodings(calibration)
            choose_mixed_precision(sim, CANDIDATES, lambda s: prepared.score_session(s, phase1_samples),
                                   prepared.score_session,
                                   allowed_accuracy_drop=drop, results_dir=str(out / "amp"), clean_start=False,
                                   forward_pass_callback=CallbackFunc(calibrate, calibration))
            path = out / f"drop{drop}.onnx"
            onnx.save(sim.to_onnx_qdq(), str(path))
            models.append(path.name)
        except Exception as exc:
            traceback.print_exc()
            notes.append(f"drop {drop}: {type(exc).__name__}: {str(exc)[:300]}")
    record(out, "AIMET", prepared, started, "; ".join(notes) or "ok", models, phase1_samples=phase1_samples)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--phase1-samples", type=int)
    args = parser.parse_args()
    main(args.folder, args.phase1_samples)
