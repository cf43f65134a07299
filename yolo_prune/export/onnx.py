"""ONNX export with a dynamic batch dimension, checked by onnx and runnable in onnxruntime."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from yolo_prune.utils.io import atomic_write_bytes

logger = logging.getLogger(__name__)

# The TorchScript-based exporter (the one that needs no extra packages) writes opsets <= 20.
EXPORTER_MAX_OPSET = 20


def default_opset() -> int:
    """The newest opset both the installed ``onnx`` and the exporter support."""
    import onnx

    return min(onnx.defs.onnx_opset_version(), EXPORTER_MAX_OPSET)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    opset: int | None = None,
    input_name: str = "images",
    output_name: str = "detections",
) -> int:
    """Export ``model`` (eval mode) to ``path`` with a dynamic batch axis; returns the opset.

    Args:
        model: the network; for a Darknet detector the output is ``[B, N, 5 + C]``.
        path: destination ``.onnx`` file (written atomically).
        input_shape: ``(channels, height, width)`` of one input image.
        opset: ONNX opset; default the newest the installed ``onnx`` and exporter share.
    """
    import io

    import onnx

    opset = opset or default_opset()
    was_training = model.training
    model.eval()
    dummy = torch.zeros((1, *input_shape))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # tracer chatter about constants; the checker runs below
            torch.onnx.export(
                model,
                (dummy,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            )
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, buffer.getvalue())
    logger.info("wrote %s (opset %d)", path, opset)
    return opset
