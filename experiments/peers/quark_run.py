"""AMD Quark for ONNX (amd-quark 0.13): its predefined configurations that target an x86 CPU through ONNX Runtime,
each applied to the whole model with `ModelQuantizer`, as its ONNX quick start does. Quark's accuracy-driven path
(`quark.onnx` AutoSearch) searches quantizer options scored by an output distance (l2, cosine, PSNR), not a user's
metric under a drop, and is not run here; the user keeps the fastest configuration within the drop (compare.py
picks it), so each configuration costs one full evaluation.

    experiments/peers/.venvs/quark/bin/python experiments/peers/quark_run.py experiments/peers/work/digits_cnn
"""

import sys
import time
import traceback
from pathlib import Path

from quark.onnx import ModelQuantizer
from quark.onnx.quantization.config import Config, get_default_config

sys.path.insert(0, str(Path(__file__).parent))
from peer_common import CalibrationReader, Prepared, record  # noqa: E402

# Quark's CPU-friendly defaults: QDQ with unsigned activations (U8S8_AAWS, the ORT CPU layout), symmetric int8
# (A8W8), and dynamic uint8 weights; the NPU configurations (XINT8, power-of-two scales) are left out.
CONFIGS = ("U8S8_AAWS", "A8W8", "UINT8_DYNAMIC_QUANT")


def main(folder: Path) -> None:
    prepared = Prepared(folder)
    out = folder / "quark"
    out.mkdir(exist_ok=True)
    started = time.time()
    models, notes, scores = [], [], {}
    for name in CONFIGS:
        path = out / f"{name}.onnx"
        try:
            ModelQuantizer(Config(global_quant_config=get_default_config(name))).quantize_model(
                str(prepared.fp32_path), str(path), CalibrationReader(prepared))
            scores[name] = prepared.score(path)
            models.append(path.name)
        except Exception as exc:
            traceback.print_exc()
            notes.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
    record(out, "Quark", prepared, started, "; ".join(notes) or "ok", models, scores=scores)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
