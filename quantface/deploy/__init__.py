"""Deployment on real engines: ONNX export of a quantized restorer and ONNX Runtime benchmarks.

Needs the `[deploy]` extra (onnx, onnxruntime); nothing else in the package imports this.
"""
