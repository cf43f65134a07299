"""Evaluation: classification accuracy, model profile (parameters, sparsity)."""

from yolo_prune.eval.accuracy import Accuracy, evaluate_accuracy, tensor_batches
from yolo_prune.eval.profile import (
    ParamStats,
    layer_stats,
    param_stats,
    weight_names,
)

__all__ = [
    "Accuracy",
    "ParamStats",
    "evaluate_accuracy",
    "layer_stats",
    "param_stats",
    "tensor_batches",
    "weight_names",
]
