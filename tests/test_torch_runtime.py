"""PyTorch's own runtime (tuner.build.torch_runtime): kinds refused with their reason where the device cannot run
them fast, per-layer precision rewrites, and the AOTInductor package round trip, on this machine's CPU."""

import pytest
import torch
from torch import nn

from tuner.build.torch_runtime import (
    TORCH_KINDS,
    CastLayer,
    EdgeCast,
    KindRefused,
    apply_precision,
    check_kinds,
    load_package,
    package,
    precision_layers,
)
from tuner.measure.torch_latency import time_callable

CPU = torch.device("cpu")
BF16 = TORCH_KINDS["bf16"].refusal(CPU) is None


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16)).eval()


@pytest.mark.parametrize("kind,reason", [("fp8-e4m3", "compute capability 8.9"), ("tf32", "CUDA GPUs only")])
def test_a_kind_the_device_cannot_run_is_refused_with_its_reason(kind, reason):
    model = mlp()
    with pytest.raises(KindRefused, match=reason):
        apply_precision(model, {"0": kind}, CPU)


def test_a_backend_wide_kind_is_refused_in_a_mix_and_a_kind_is_refused_on_a_layer_it_does_not_fit():
    layers = precision_layers(mlp())
    assert list(layers) == ["0", "2", "4"]
    with pytest.raises(KindRefused, match="every layer takes it or none"):
        check_kinds({"0": "tf32", "2": "fp32"}, layers, torch.device("cuda"))  # no GPU needed to refuse
    conv = {"conv": nn.Conv2d(3, 16, 3)}
    with pytest.raises(KindRefused, match="does not apply to layer 'conv'"):
        check_kinds({"conv": "fp8-e4m3"}, conv, torch.device("cuda"))
    with pytest.raises(KindRefused, match="unknown torch precision kind 'int3'"):
        check_kinds({"0": "int3"}, layers, CPU)


@pytest.mark.skipif(not BF16, reason="this CPU has no bf16 units")
def test_a_mix_casts_only_its_layers_and_a_uniform_float_kind_casts_the_whole_model():
    x = torch.randn(8, 32)
    reference = mlp()(x)
    mixed = apply_precision(mlp(), {"2": "bf16"}, CPU)
    assert isinstance(mixed[2], CastLayer) and mixed[2].layer.weight.dtype == torch.bfloat16
    assert mixed[0].weight.dtype == torch.float32 and mixed(x).dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(mixed(x), reference).min() > 0.99
    whole = apply_precision(mlp(), {name: "bf16" for name in ("0", "2", "4")}, CPU)
    assert isinstance(whole, EdgeCast) and whole(x).dtype == torch.float32
    assert {p.dtype for p in whole.parameters()} == {torch.bfloat16}


@pytest.mark.slow
def test_a_package_loads_back_and_serves_every_batch_size(tmp_path):
    model = mlp()
    path = package(model, (torch.randn(2, 32),), tmp_path / "model.pt2")
    loaded = load_package(path)
    for batch in (1, 5):
        x = torch.randn(batch, 32)
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    timing = time_callable(loaded, (torch.randn(3, 32),), warmup=1, repeats=4)
    assert timing.latency.repeats == 4 and timing.latency.p90_ms >= timing.latency.median_ms
    assert timing.peak_memory_mb is None  # recorded on a GPU only
