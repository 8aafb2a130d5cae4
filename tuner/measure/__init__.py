"""Measure one built artifact: quality with the task's metric, latency in ONNX Runtime."""
