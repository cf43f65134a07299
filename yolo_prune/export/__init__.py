"""Exports of a (pruned) Darknet model: Darknet cfg + weights, and ONNX."""

from yolo_prune.export.darknet import export_darknet
from yolo_prune.export.onnx import export_onnx

__all__ = ["export_darknet", "export_onnx"]
