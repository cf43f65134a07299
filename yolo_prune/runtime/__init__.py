"""Where a detector runs: our PyTorch form, ONNX Runtime or OpenCV DNN, behind one interface.

Each runtime is an ``nn.Module`` called like the Darknet model it came from (``[B, 3, H, W]``
RGB in [0, 1] -> ``[B, N, 5 + C]`` rows: centre x, centre y, width, height in input pixels,
objectness, class probabilities) that says ``input_shape``, ``num_classes`` and
``letter_box``, so :class:`~yolo_prune.detect.Detector` runs any of them through the same pre-
and post-processing. :func:`build_runtime` makes one from a model; ``"auto"`` times the
candidates side by side and keeps the fastest.
"""

from yolo_prune.runtime.onnxrt import OnnxRuntimeModel, load_onnx_model
from yolo_prune.runtime.opencv import OpenCVModel
from yolo_prune.runtime.select import RUNTIMES, RuntimeChoice, build_runtime, time_runtimes

__all__ = [
    "RUNTIMES",
    "OnnxRuntimeModel",
    "OpenCVModel",
    "RuntimeChoice",
    "build_runtime",
    "load_onnx_model",
    "time_runtimes",
]
