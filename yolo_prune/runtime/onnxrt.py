"""An exported ``.onnx`` detector run by ONNX Runtime, float or INT8."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yolo_prune.errors import ConfigError, WeightsError

logger = logging.getLogger(__name__)


# ORT moves a QuantizeLinear up over a max pool so that the pool runs in uint8. After a float
# stem (see ``yolo_prune.export.quantize``) that pool runs in NCHW, ORT's slow uint8 layout:
# 18.5 ms for yolov3-tiny's first pool at 320 (1 thread, AMD EPYC [avx2], profiled under load).
# Without the move the pool stays float and the graph is otherwise the same (a max pool
# commutes with the quantization); the all-int8 files run within 2% as fast or faster.
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


def session_options(threads: int | None):
    """The options of every ORT session we open: ``threads`` intra-op threads (default torch's),
    one inter-op thread, every graph optimization, no spinning between runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads that spin between runs take the cores from decoding, pre-processing and NMS:
    # detect on the demo clip ran at 33-69 FPS with spinning, 62-73 without (Yolo-Fastest).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxRuntimeModel(nn.Module):
    """A detector ``.onnx`` file (ours, float or INT8; or any with a ``[B, N, 5 + C]`` output)
    as a module: ``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, N, 5 + C]`` rows, as the Darknet model.

    What the file carries in its metadata (see :mod:`yolo_prune.export.onnx`) sets the input
    size, classes, class names and letterboxing; a file without it is read from its input and
    output shapes (no letterbox, no names).

    Args:
        model: the serialized model, or a path to it.
        threads: intra-op threads (default: torch's thread count, so runtimes compare fairly).
        name: how errors name the model (default: the file name).

    Raises:
        WeightsError: not an ONNX model, or not a detector's input/output.
    """

    runtime_name = "onnxruntime"

    def __init__(self, model: bytes | str | Path, *, threads: int | None = None, name: str = ""):
        super().__init__()
        import onnx
        import onnxruntime as ort

        path = None if isinstance(model, bytes) else Path(model)
        self.name = name or (path.name if path else "model.onnx")
        data = model if path is None else path.read_bytes()
        try:
            proto = onnx.load_from_string(data)
            if not proto.graph.node:
                raise ValueError("its graph has no nodes")
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            why = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            raise WeightsError(
                f"not an ONNX model ({why}); give a file written by yolo-prune export "
                "--format onnx",
                path=path or self.name,
            ) from None
        self.metadata: dict[str, str] = {p.key: p.value for p in proto.metadata_props}
        self.input_shape = self._input_shape(proto)
        self.letter_box = self.metadata.get("letter_box", "0") == "1"
        names = self.metadata.get("names")
        self.names: list[str] | None = json.loads(names) if names else None
        self._weights = self._weight_counts(proto)
        try:
            self.session = ort.InferenceSession(
                data,
                session_options(threads),
                providers=["CPUExecutionProvider"],
                disabled_optimizers=DISABLED_OPTIMIZERS,
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise WeightsError(
                f"ONNX Runtime cannot load it: {str(exc).splitlines()[0][:120]}",
                path=path or self.name,
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.num_classes = self._classes()

    is_detector = True

    def _input_shape(self, proto: Any) -> tuple[int, int, int]:
        """``(C, H, W)`` of the graph's one image input."""
        if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
            raise WeightsError(
                f"{len(proto.graph.input)} inputs and {len(proto.graph.output)} outputs; a "
                "detector has one image input and one [B, N, 5 + classes] output",
                path=self.name,
            )
        if self.metadata.get("task", "detect") != "detect":
            raise WeightsError(f"task {self.metadata['task']!r}, not a detector", path=self.name)
        inp = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
        if len(inp) != 4 or not all(isinstance(d, int) and d > 0 for d in inp[1:]):
            raise WeightsError(
                f"input shape {inp}; expected [batch, 3, height, width] with a fixed size",
                path=self.name,
            )
        return int(inp[1]), int(inp[2]), int(inp[3])

    def _classes(self) -> int:
        """Classes from the metadata, else from the output of one pass on a blank image."""
        if "classes" in self.metadata:
            return int(self.metadata["classes"])
        blank = np.zeros((1, *self.input_shape), dtype=np.float32)
        try:
            shape = self.session.run(None, {self.input_name: blank})[0].shape
        except Exception as exc:
            raise WeightsError(
                f"ONNX Runtime cannot run it on a {self.input_shape} image: "
                f"{str(exc).splitlines()[0][:120]}",
                path=self.name,
            ) from None
        if len(shape) != 3 or shape[2] < 6:
            raise WeightsError(
                f"output shape {list(shape)} is not a detector's [batch, boxes, 5 + classes]; "
                "yolo-prune runs YOLO detectors exported by yolo-prune export",
                path=self.name,
            )
        return int(shape[2]) - 5

    @staticmethod
    def _weight_counts(proto: Any) -> tuple[int, int, int, int]:
        """Values stored in the file's initializers: (all, non-zero, in 4-D convolution
        weights, non-zero of those)."""
        from onnx import numpy_helper

        total = nonzero = weights = nonzero_weights = 0
        for init in proto.graph.initializer:
            arr = numpy_helper.to_array(init)
            count = int(np.count_nonzero(arr))
            total += arr.size
            nonzero += count
            if arr.ndim == 4:
                weights += arr.size
                nonzero_weights += count
        return total, nonzero, weights, nonzero_weights

    def size_figures(self) -> dict[str, Any]:
        """Parameter and FLOP figures with the keys of
        :func:`yolo_prune.eval.detection.size_figures`: counts of the values the file stores
        (batch norms folded into the convolutions; an INT8 file stores pruned zeros as zeros,
        plus its scales), GFLOPs of the exported network from its metadata."""
        total, nonzero, weights, nonzero_weights = self._weights
        gflops = self.metadata.get("gflops")
        return {
            "params": total,
            "nonzero_params": nonzero,
            "params_sparsity": 1.0 - nonzero / total if total else 0.0,
            "weights": weights,
            "nonzero_weights": nonzero_weights,
            "sparsity": 1.0 - nonzero_weights / weights if weights else 0.0,
            "gflops": float(gflops) if gflops else None,
            "gflops_nonzero": None,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            got = "x".join(str(v) for v in x.shape[-1:-3:-1])
            raise ConfigError(
                f"{self.name} runs at {w}x{h} only (its input size is fixed at export), got "
                f"{got}; export it again with --size for another size"
            )
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: batch})[0])


def load_onnx_model(path: str | Path, *, threads: int | None = None) -> OnnxRuntimeModel:
    """The ``.onnx`` detector at ``path`` in ONNX Runtime (see :class:`OnnxRuntimeModel`)."""
    from yolo_prune.errors import require_file

    return OnnxRuntimeModel(require_file(path, "ONNX model"), threads=threads)
