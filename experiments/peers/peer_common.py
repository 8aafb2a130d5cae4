"""What a peer's script needs of the prepared model (`prepare.py`), with numpy and onnxruntime only: the peers
run in their own environments, without `tuner`.

The metric here is the task's own, written again in numpy (accuracy against the labels; mean cosine against the
fp32 model's outputs), so that a peer's own tuning sees the numbers `tuner`'s study sees. The table's numbers do not
come from here: `compare.py` scores every model with `tuner`'s task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


class Prepared:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        data = np.load(self.folder / "data.npz")
        self.inputs = {n: data[n] for n in self.meta["inputs"]}
        self.calibration = {n: data[f"cal:{n}"] for n in self.meta["inputs"]}
        self.target = data["target"]
        self.fp32_path = self.folder / "fp32.onnx"
        self.evaluations = 0  # full evaluations the peer asked for

    def score(self, model: str | Path, threads: int = 2) -> float:
        """The task's metric of an ONNX file on the whole evaluation set."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return self.score_session(ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]))

    def score_session(self, session: ort.InferenceSession, samples: int | None = None) -> float:
        """The task's metric of an open session on the whole evaluation set (``samples``: on its first ones only,
        which does not count as a full evaluation)."""
        n = len(self.target) if samples is None else min(samples, len(self.target))
        self.evaluations += n == len(self.target)
        step = self.meta["eval_batch"]
        outputs = np.concatenate([session.run(None, {k: v[i:min(i + step, n)] for k, v in self.inputs.items()})[0]
                                  for i in range(0, n, step)])
        if self.meta["kind"] == "accuracy":
            return float((outputs.argmax(axis=1) == self.target[:n]).mean())
        a = outputs / np.linalg.norm(outputs, axis=-1, keepdims=True)
        b = self.target[:n] / np.linalg.norm(self.target[:n], axis=-1, keepdims=True)
        return float((a * b).sum(axis=-1).mean())

    def calibration_batches(self, batch: int | None = None) -> list[dict[str, np.ndarray]]:
        batch = batch or self.meta["calibration_batch"]
        n = len(next(iter(self.calibration.values())))
        return [{k: v[i:i + batch] for k, v in self.calibration.items()} for i in range(0, n, batch)]


class CalibrationReader:
    """The CalibrationDataReader protocol (get_next, rewind) over the calibration inputs. ONNX Runtime's and Neural
    Compressor's reader classes both accept any class with `get_next` as a subclass (`__subclasshook__`)."""

    def __init__(self, prepared: Prepared, batch: int | None = None) -> None:
        self.batches = prepared.calibration_batches(batch)
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.batches)


def record(out: Path, peer: str, prepared: Prepared, started: float, status: str, models: list[str], **extra) -> None:
    """The peer's run, as compare.py reads it: what it output, how long it took, how many full evaluations."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({
        "peer": peer, "model": prepared.meta["model"], "status": status, "models": models,
        "wall_s": round(time.time() - started, 1), "evaluations": prepared.evaluations, **extra}, indent=1))
    print(f"{peer} on {prepared.meta['model']}: {status}; {len(models)} model(s), {prepared.evaluations} evaluations, "
          f"{time.time() - started:.0f} s")
