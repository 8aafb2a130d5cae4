"""Where a measurement was taken: the node's fingerprint and the package versions that shape the numbers."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
from importlib import metadata
from pathlib import Path

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "fma", "neon", "asimd")
PACKAGES = ("onnxruntime", "onnx", "torch", "optuna", "tuner")


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                present = set(value.split())
                flags = [f for f in _FLAGS if f in present]
    except OSError:
        pass
    return model, flags


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def fingerprint(threads: int) -> dict[str, object]:
    """CPU model and the ISA flags ORT's kernels depend on, cores, host, threads and package versions."""
    model, flags = _cpu()
    return {"cpu": model, "cpu_flags": flags, "cores": os.cpu_count(), "host": socket.gethostname(),
            "machine": platform.machine(), "python": platform.python_version(), "threads": threads,
            **package_versions()}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
