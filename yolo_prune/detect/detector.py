"""``Detector``: a YOLO model with its pre- and post-processing, images in, detections out.

    det = Detector.from_files("yolov3-tiny.cfg", "yolov3-tiny.weights", size=416)
    dets = det([cv2.imread("dog.jpg")])      # one Detections per image, original pixels

The detector runs an inference copy of the model: batch norms folded into the convolutions,
weights and activations in channels-last memory, autograd off. That copy computes the same
outputs as the model (to float rounding) about 1.7x faster on CPU; the caller's model is left
as it was.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolo_prune.detect.postprocess import Detections, postprocess
from yolo_prune.detect.preprocess import ImageTransform, model_letterbox, preprocess
from yolo_prune.errors import ConfigError

logger = logging.getLogger(__name__)


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def with_input_size(model: nn.Module, size: int | Sequence[int] | None) -> nn.Module:
    """``model`` rebuilt for a ``size`` input, sharing nothing with it; ``model`` itself if it
    already has that size or ``size`` is None.

    A Darknet detector's ``[yolo]`` layers know the input size they decode boxes for, so running
    one at another size needs a model built for it: the same cfg sections at the new size, with
    the same tensors (pruned zeros included).

    Raises:
        ConfigError: the model cannot be rebuilt (not built from cfg sections), or the cfg
            cannot run at that size (e.g. not a multiple of its stride).
    """
    if size is None:
        return model
    hw = _as_hw(size)
    shape = getattr(model, "input_shape", None)
    if shape is None or tuple(shape[1:]) == hw:
        # A model that does not say its input size is taken to accept any.
        return model
    sections = getattr(model, "sections", None)
    if sections is None:
        raise ConfigError(
            f"cannot run this {type(model).__name__} at {hw[1]}x{hw[0]}: it was not built from "
            "a Darknet cfg; build it at that size instead"
        )
    new = type(model)(copy.deepcopy(sections), size=hw)
    if getattr(model, "fused", False):
        new.fuse_()
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"cannot resize the model to {hw[1]}x{hw[0]}: its tensors depend on the input size "
            f"({(missing or unexpected)[0]}); build it at that size and load the weights again"
        )
    if hasattr(model, "header"):
        new.header = model.header
    return new.to(next(model.parameters()).device).train(model.training)


def prepare_for_inference(
    model: nn.Module, *, inplace: bool = False, compile_mish: bool | None = None
) -> nn.Module:
    """The fastest CPU/GPU form of ``model`` for eval-mode inference.

    Folds batch norms into convolutions (if the model offers ``fuse_``), switches to eval mode,
    turns autograd off for its parameters and stores them channels-last. Input tensors should
    be channels-last too (:func:`~yolo_prune.detect.preprocess.preprocess` makes them so).

    Args:
        model: the model; left untouched unless ``inplace``.
        inplace: change ``model`` itself instead of a deep copy (saves memory; the model can
            then no longer be trained or saved as Darknet .weights).
        compile_mish: run mish through a compiled one-exponential kernel
            (:mod:`yolo_prune.detect.fast_mish`): much faster on CPU, some seconds to compile at
            the first forward pass of the process (then cached on disk); ``None``: when the
            model has mish and sits on the CPU.
    """
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    if callable(getattr(m, "fuse_", None)) and not getattr(m, "fused", False):
        m.fuse_()
    m.requires_grad_(False)
    if compile_mish is None:
        on_cpu = all(p.device.type == "cpu" for p in m.parameters())
        compile_mish = on_cpu and any(isinstance(x, nn.Mish) for x in m.modules())
    if compile_mish:
        from yolo_prune.detect.fast_mish import compile_mish_

        compile_mish_(m)
    return m.to(memory_format=torch.channels_last)


class Detector:
    """A detector: pre-process, run the model, post-process.

    Args:
        model: eval-mode output ``[B, N, 5 + C]`` (see :class:`yolo_prune.darknet.Darknet`).
        size: network input, an int or ``(height, width)`` pixels; ``None``: the model's.
        letterbox: keep the aspect ratio (pad with grey); ``None``: the cfg's ``letter_box``.
        conf: score threshold (objectness * class probability).
        nms: IoU threshold of the class-aware NMS.
        multi_label: a box may carry several classes above ``conf`` (as Darknet does).
        max_det: most detections kept per image.
        device: torch device to run on.
        optimize: run an inference copy (:func:`prepare_for_inference`) instead of ``model``
            (runtime torch).
        runtime: ``torch``, ``onnxruntime``, ``opencv`` or ``auto`` (the fastest of them for
            this model on this machine, timed side by side; see
            :func:`yolo_prune.runtime.build_runtime`); ``None``: torch, or the runtime a model
            is bound to (an ``.onnx`` file's :class:`~yolo_prune.runtime.OnnxRuntimeModel`).
        compile_mish: torch runtime: compiled mish (``None``: for mish models on the CPU).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        size: int | Sequence[int] | None = None,
        letterbox: bool | None = None,
        conf: float = 0.25,
        nms: float = 0.45,
        multi_label: bool = True,
        max_det: int = 300,
        device: torch.device | str = "cpu",
        optimize: bool = True,
        runtime: str | None = None,
        compile_mish: bool | None = None,
    ):
        if not 0.0 <= conf < 1.0:
            raise ConfigError(f"conf {conf}; expected a score threshold in [0, 1)")
        if not 0.0 < nms <= 1.0:
            raise ConfigError(f"nms {nms}; expected an IoU threshold in (0, 1]")
        if max_det < 1:
            raise ConfigError(f"max_det {max_det}; expected a positive integer")
        if not getattr(model, "is_detector", True):
            raise ConfigError("this model has no [yolo] layers: it is not a detector")
        resized = with_input_size(model, size)
        bound = getattr(model, "runtime_name", None)
        self.runtime = runtime or bound or "torch"
        self.runtime_latency_ms: dict[str, float] = {}  # what `auto` measured, batch 1
        if self.runtime != "torch" or bound is not None:
            from yolo_prune.runtime import build_runtime

            choice = build_runtime(resized, self.runtime, device=device, compile_mish=compile_mish)
            self.runtime, self.runtime_latency_ms = choice.name, choice.latency_ms
            resized = choice.model
        elif optimize:
            resized = prepare_for_inference(
                resized, inplace=resized is not model, compile_mish=compile_mish
            )
        else:
            resized.eval()
        self.model = resized.to(device)
        self.device = torch.device(device)
        if hasattr(self.model, "input_shape"):
            self.size: tuple[int, int] = tuple(self.model.input_shape[1:])
        elif size is not None:
            self.size = _as_hw(size)
        else:
            raise ConfigError("give size=: the model does not say what input size it takes")
        self.letterbox = model_letterbox(model, letterbox)
        self.conf, self.nms, self.multi_label, self.max_det = conf, nms, multi_label, max_det

    @classmethod
    def from_files(
        cls,
        cfg: str | Path,
        weights: str | Path | None,
        *,
        size: int | Sequence[int] | None = None,
        **kwargs,
    ) -> Detector:
        """A detector from a Darknet cfg and ``.weights`` (``None``: untrained weights).

        ``kwargs`` are the other arguments of :class:`Detector`.
        """
        from yolo_prune.darknet import Darknet
        from yolo_prune.errors import require_file

        model = Darknet.from_cfg(require_file(cfg, "cfg file"), size=size)
        if weights is not None:
            model.load_weights(require_file(weights, "weights file"))
        # The model is ours alone: optimise it in place rather than keep two copies.
        return cls(prepare_for_inference(model, inplace=True), optimize=False, **kwargs)

    @property
    def classes(self) -> int:
        """Number of classes the model predicts."""
        classes = getattr(self.model, "num_classes", None)
        if classes is not None:
            return int(classes)
        raise AttributeError("the model does not say how many classes it has")

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[ImageTransform]]:
        """BGR ``uint8`` images -> ``([B, 3, H, W]`` input on the device, transforms)."""
        x, transforms = preprocess(images, self.size, letterbox=self.letterbox)
        return x.to(self.device, non_blocking=True), transforms

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's rows ``[B, N, 5 + C]`` for a pre-processed batch ``[B, 3, H, W]``."""
        return self.model(x)

    def postprocess(
        self, prediction: torch.Tensor, transforms: Sequence[ImageTransform] | None
    ) -> list[Detections]:
        """Rows ``[B, N, 5 + C]`` -> one :class:`Detections` per image (original pixels)."""
        return postprocess(
            prediction,
            transforms,
            conf=self.conf,
            nms=self.nms,
            multi_label=self.multi_label,
            max_det=self.max_det,
        )

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for BGR ``uint8`` ``[H, W, 3]`` images (any sizes), original pixels."""
        if len(images) == 0:
            return []
        x, transforms = self.preprocess(images)
        return [d.to("cpu") for d in self.postprocess(self.forward(x), transforms)]
