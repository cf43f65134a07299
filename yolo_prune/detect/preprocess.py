"""Images -> network input as Darknet prepares it, and the way back to original pixels.

Two modes, as in Darknet's ``detector test``:

- plain resize (the default): the image is stretched to the network size, aspect ratio lost;
- letterbox (``letter_box=1`` in the cfg, or asked for): scaled to fit inside the network size
  keeping its aspect ratio, centred, the borders filled with grey 0.5.

Resizing is OpenCV's bilinear ``INTER_LINEAR`` (what OpenCV's DNN pipelines use; Darknet's own
``resize_image`` is also bilinear but samples with a slightly different pixel alignment).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

# Darknet fills letterbox borders with 0.5 (fill_image(boxed, .5)).
LETTERBOX_FILL = 0.5


@dataclass(frozen=True)
class ImageTransform:
    """How one image was mapped to the network input (network px = original px * scale + pad)."""

    width: int  # original image width, pixels
    height: int  # original image height, pixels
    scale_x: float  # network pixels per original pixel, horizontally
    scale_y: float  # network pixels per original pixel, vertically
    pad_x: int  # left border added in the network input, pixels
    pad_y: int  # top border added in the network input, pixels

    def to_original(self, boxes: torch.Tensor, *, clip: bool = True) -> torch.Tensor:
        """Map boxes from network-input pixels back to original-image pixels.

        Args:
            boxes: ``[N, 4]`` xyxy in network-input pixels.
            clip: clamp the result to the image (``[0, width] x [0, height]``).

        Returns:
            ``[N, 4]`` xyxy in original-image pixels (a new tensor).
        """
        pad = boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        out = (boxes - pad) / scale
        if clip:
            out[:, 0::2] = out[:, 0::2].clamp(0, self.width)
            out[:, 1::2] = out[:, 1::2].clamp(0, self.height)
        return out


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def letterbox_geometry(width: int, height: int, size: int | Sequence[int]) -> ImageTransform:
    """Where Darknet's ``letterbox_image`` puts a ``width`` x ``height`` image in ``size``.

    The scaled side is computed with integer division as Darknet does, and the image is centred
    with the odd pixel of border at the bottom/right.
    """
    net_h, net_w = _as_hw(size)
    if net_w / width < net_h / height:
        new_w, new_h = net_w, (height * net_w) // width
    else:
        new_w, new_h = (width * net_h) // height, net_h
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    return ImageTransform(
        width=width,
        height=height,
        scale_x=new_w / width,
        scale_y=new_h / height,
        pad_x=(net_w - new_w) // 2,
        pad_y=(net_h - new_h) // 2,
    )


def resize_geometry(width: int, height: int, size: int | Sequence[int]) -> ImageTransform:
    """The plain (stretching) resize of a ``width`` x ``height`` image to ``size``."""
    net_h, net_w = _as_hw(size)
    return ImageTransform(width, height, net_w / width, net_h / height, 0, 0)


def preprocess(
    images: Sequence[np.ndarray],
    size: int | Sequence[int],
    *,
    letterbox: bool = False,
) -> tuple[torch.Tensor, list[ImageTransform]]:
    """A batch of BGR images -> the network input and how each image was mapped.

    Args:
        images: BGR ``uint8`` ``[H, W, 3]`` arrays (as OpenCV reads them), any sizes.
        size: network input, an int (square) or ``(height, width)``, pixels.
        letterbox: keep the aspect ratio and pad with grey instead of stretching.

    Returns:
        ``(x, transforms)``: ``x`` float32 ``[B, 3, H, W]`` RGB in [0, 1], stored channels-last
        (NHWC memory, which is what the convolutions run fastest on; call ``.contiguous()`` for
        NCHW memory), and one :class:`ImageTransform` per image.
    """
    net_h, net_w = _as_hw(size)
    batch = np.empty((len(images), net_h, net_w, 3), dtype=np.uint8)
    transforms = []
    needs_fill = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i} has shape {image.shape}; expected [H, W, 3] BGR")
        t = letterbox_geometry(w, h, size) if letterbox else resize_geometry(w, h, size)
        new_w, new_h = round(w * t.scale_x), round(h * t.scale_y)
        resized = (
            image
            if (new_w, new_h) == (w, h)
            else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        )
        if (new_w, new_h) != (net_w, net_h):
            batch[i] = 0
            batch[i, t.pad_y : t.pad_y + new_h, t.pad_x : t.pad_x + new_w] = resized
            needs_fill.append((i, t, new_w, new_h))
        else:
            batch[i] = resized
        transforms.append(t)
    # BGR -> RGB by reversing the channel axis; permute keeps NHWC memory (channels-last).
    x = torch.from_numpy(batch).flip(-1).permute(0, 3, 1, 2).float().div_(255.0)
    for i, t, new_w, new_h in needs_fill:
        # Borders are exactly 0.5, as Darknet fills them, not the nearest uint8 (127 or 128).
        keep = torch.zeros(net_h, net_w, dtype=torch.bool)
        keep[t.pad_y : t.pad_y + new_h, t.pad_x : t.pad_x + new_w] = True
        x[i].masked_fill_(~keep, LETTERBOX_FILL)
    return x, transforms


def model_letterbox(model: object, letterbox: bool | None) -> bool:
    """``letterbox`` if given, else the cfg's ``letter_box`` (False for a model without one)."""
    if letterbox is not None:
        return bool(letterbox)
    return bool(getattr(model, "letter_box", False))
