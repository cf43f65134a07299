"""A Darknet detector run by OpenCV's DNN module (its own Darknet importer and kernels)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolo_prune.utils.io import atomic_write_text


class OpenCVModel(nn.Module):
    """``cv2.dnn.readNetFromDarknet`` of a model's cfg and weights, called like the model:
    ``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, N, 5 + C]`` rows in our layout.

    OpenCV's rows give boxes relative to the input and class scores already multiplied by
    objectness, zeroed below each ``[yolo]`` section's ``thresh``; the cfg handed to OpenCV sets
    that threshold to 0 (the detector's ``conf`` decides), and the rows are converted back
    (boxes to input pixels, scores divided by objectness). Row order differs from ours (cell
    before anchor), which post-processing does not care about.

    Build one with :meth:`from_darknet`.
    """

    runtime_name = "opencv"
    is_detector = True

    def __init__(
        self,
        cfg: Path,
        weights: Path,
        *,
        input_shape: tuple[int, int, int],
        num_classes: int,
        letter_box: bool,
        threads: int | None = None,
    ):
        super().__init__()
        import cv2

        if threads:
            cv2.setNumThreads(threads)
        self.net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.outputs = self.net.getUnconnectedOutLayersNames()
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.letter_box = letter_box

    @classmethod
    def from_darknet(cls, model: nn.Module, *, threads: int | None = None) -> OpenCVModel:
        """OpenCV's network for a (shrunk) Darknet detector with BN not folded."""
        from yolo_prune.export.darknet import export_darknet

        with tempfile.TemporaryDirectory() as tmp:
            cfg, weights = Path(tmp) / "model.cfg", Path(tmp) / "model.weights"
            export_darknet(model, cfg, weights)
            text = re.sub(r"^\[yolo\][ \t]*$", "[yolo]\nthresh=0", cfg.read_text(), flags=re.M)
            atomic_write_text(cfg, text)
            return cls(
                cfg,
                weights,
                input_shape=tuple(model.input_shape),
                num_classes=model.num_classes,
                letter_box=bool(getattr(model, "letter_box", False)),
                threads=threads,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        images = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = []
        for image in images:  # OpenCV's [yolo] output has no batch axis
            self.net.setInput(image[None])
            rows = np.concatenate(self.net.forward(self.outputs))
            rows[:, :4] *= np.array([w, h, w, h], dtype=np.float32)
            obj = rows[:, 4:5]
            rows[:, 5:] = np.divide(rows[:, 5:], obj, out=np.zeros_like(rows[:, 5:]), where=obj > 0)
            out.append(rows)
        return torch.from_numpy(np.stack(out))
