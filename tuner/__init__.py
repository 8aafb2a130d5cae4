"""tuner: search per-layer quantization, pruning and fusion for a PyTorch model, measured on ONNX Runtime.

Importing ``tuner`` loads nothing heavy; ``tuner.Task`` (torch) and the API functions load what they need
when first used.
"""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["Evaluation", "Task", "run", "front", "choose", "pick", "verify"]

_LAZY = {"Evaluation": "tuner.task", "Task": "tuner.task", "run": "tuner.api", "front": "tuner.api",
         "choose": "tuner.api", "pick": "tuner.api", "verify": "tuner.api"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
