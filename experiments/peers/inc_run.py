"""Intel Neural Compressor for ONNX (onnx-neural-compressor 1.0) as its documentation recommends for "fastest within
an accuracy drop": `autotune` over its predefined tuning sets (static int8 first, then dynamic int8; each set
falls back op types to fp32 step by step), stopping at the first model within the tolerable loss. One autotune per
constraint. Its tolerance is relative to fp32, so each absolute drop is passed as drop / fp32.

    experiments/peers/.venvs/inc/bin/python experiments/peers/inc_run.py experiments/peers/work/digits_cnn
"""

import sys
import time
import traceback
from pathlib import Path

import onnx
from onnx_neural_compressor.quantization import config, tuning

sys.path.insert(0, str(Path(__file__).parent))
from peer_common import CalibrationReader, Prepared, record  # noqa: E402


def main(folder: Path) -> None:
    prepared = Prepared(folder)
    out = folder / "inc"
    out.mkdir(exist_ok=True)
    started = time.time()
    models, notes = [], []
    for constraint in prepared.meta["constraints"]:
        tolerance = constraint["drop"] / prepared.meta["fp32"]
        config_set = (config.StaticQuantConfig.get_config_set_for_tuning()
                      + config.DynamicQuantConfig.get_config_set_for_tuning())
        tune = tuning.TuningConfig(config_set=config_set, tolerable_loss=tolerance)
        try:
            best = tuning.autotune(str(prepared.fp32_path), tune, eval_fn=prepared.score,
                                   calibration_data_reader=CalibrationReader(prepared))
        except SystemExit:  # autotune calls exit(0) when no configuration meets the goal
            best = None
        except Exception as exc:  # what happened, in its words
            traceback.print_exc()
            notes.append(f"drop {constraint['drop']}: {type(exc).__name__}: {exc}")
            continue
        if best is None:
            notes.append(f"drop {constraint['drop']}: no configuration within the tolerable loss")
            continue
        path = out / f"drop{constraint['drop']}.onnx"
        onnx.save_model(best, str(path))
        models.append(path.name)
    record(out, "Neural Compressor", prepared, started, "; ".join(notes) or "ok", models)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
