"""The export itself: torch's ONNX registry built once per process, the same file either way."""

import hashlib

import torch
from torch import nn

from tuner.build import export


def test_exports_in_one_process_build_torchs_registry_once_and_write_the_same_file(tmp_path):
    from torch.onnx._internal.exporter import _registration

    constructor = _registration.ONNXRegistry.__dict__["from_torchlib"]
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    digests, registries = [], []
    for i in range(2):
        export.export_onnx(model, (torch.randn(1, 6),), tmp_path / f"{i}.onnx")
        digests.append(hashlib.sha256((tmp_path / f"{i}.onnx").read_bytes()).hexdigest())
        registries.append(dict(export._REGISTRIES))
    assert digests[0] == digests[1]
    assert len(registries[1]) == 1 and registries[0] == registries[1]  # the same registry object, reused
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is constructor  # torch's own outside our exports
