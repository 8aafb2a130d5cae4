"""Build stages: torch -> structured pruning -> ONNX -> ORT quantization (graph optimization at session time)."""
