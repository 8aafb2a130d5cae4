"""Olive's user script (loaded by Olive from its path): the prepared model's data and metric as Olive components."""

import sys
from pathlib import Path

import torch
from olive.data.registry import Registry

sys.path.insert(0, str(Path(__file__).parent))
from peer_common import Prepared  # noqa: E402

_PREPARED: dict[str, Prepared] = {}


def prepared(folder: str) -> Prepared:
    if folder not in _PREPARED:
        _PREPARED[folder] = Prepared(folder)
    return _PREPARED[folder]


@Registry.register_dataset()
def peer_samples(folder: str, which: str = "calibration", **_):
    """One (inputs by name, label) pair per sample: the calibration set, or evaluation inputs for latency."""
    data = prepared(folder).calibration if which == "calibration" else prepared(folder).inputs
    n = len(next(iter(data.values())))
    return [({k: torch.from_numpy(v[i]) for k, v in data.items()}, 0) for i in range(n)]


def evaluate(model, device, execution_providers, folder: str):
    """The task's metric on the whole evaluation set (Olive's custom metric through evaluate_func)."""
    return prepared(folder).score(model.model_path)
