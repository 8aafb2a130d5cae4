"""tuner: search per-layer quantization, pruning and fusion for a PyTorch model, measured on ONNX Runtime."""

from tuner.task import Evaluation, Task

__all__ = ["Evaluation", "Task"]
__version__ = "0.1.0"
