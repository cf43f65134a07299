"""Training augmentation for detection through albumentations: HSV jitter, flip, scale/translate,
then letterbox or plain resize to the network input.

Boxes travel with the image as ``pascal_voc`` (x0, y0, x1, y1 in pixels); boxes pushed partly
outside the image are clipped, and boxes left with less than ``min_visibility`` of their area
are dropped. Every random choice comes from the transform's own generator, which the dataset
seeds per (epoch, image), so a sample is the same whatever process or worker draws it: that is
what lets a resumed run and a distributed run see exactly the images an uninterrupted run sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # imported where a pipeline is built: albumentations takes ~0.7 s to import
    import albumentations as A

# Grey of letterbox and affine borders (Darknet fills with 0.5).
FILL = 127


@dataclass(frozen=True)
class AugmentConfig:
    """Random training transforms; the defaults are mild (fine-tuning a trained detector)."""

    hsv_h: int = 5  # hue shift limit, OpenCV hue units (0..180)
    hsv_s: int = 30  # saturation shift limit, 0..255
    hsv_v: int = 30  # value (brightness) shift limit, 0..255
    hsv_p: float = 0.5  # probability of the HSV jitter
    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 0.2  # zoom drawn from [1 - scale, 1 + scale]
    translate: float = 0.1  # shift drawn from [-translate, translate] of the image side
    affine_p: float = 0.5  # probability of the scale/translate
    min_visibility: float = 0.2  # drop boxes keeping less than this fraction of their area
    mosaic: float = 0.0  # fraction of samples tiled from 4 images (TrainDataset does it)

    def __post_init__(self) -> None:
        for name in ("hsv_p", "flip", "affine_p", "min_visibility", "mosaic"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"AugmentConfig.{name}={v}; expected a probability in [0, 1]")
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"AugmentConfig.scale={self.scale}; expected [0, 1)")
        if not 0.0 <= self.translate <= 0.5:
            raise ValueError(f"AugmentConfig.translate={self.translate}; expected [0, 0.5]")
        if min(self.hsv_h, self.hsv_s, self.hsv_v) < 0:
            raise ValueError("AugmentConfig hsv limits must be >= 0")


NO_AUGMENT = AugmentConfig(hsv_p=0.0, flip=0.0, affine_p=0.0, min_visibility=0.0)
"""Only the resize/letterbox: for validation and for exact-reproduction tests."""


def build_transform(
    size: tuple[int, int], *, augment: AugmentConfig | None = None, letterbox: bool = False
) -> A.Compose:
    """The albumentations pipeline: ``image`` (RGB ``uint8`` ``[H, W, 3]``), ``bboxes``
    (``[N, 4]`` xyxy pixels) and ``classes`` in, the same at the network size out.

    Args:
        size: network input ``(height, width)``, pixels.
        augment: the random transforms; ``None`` means :data:`NO_AUGMENT`.
        letterbox: keep the aspect ratio and pad with grey instead of stretching.
    """
    import albumentations as A

    aug = NO_AUGMENT if augment is None else augment
    h, w = size
    steps: list = []
    if letterbox:
        steps += [
            A.LongestMaxSize(max_size=max(h, w), interpolation=cv2.INTER_LINEAR),
            A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=FILL),
        ]
    else:
        steps.append(A.Resize(height=h, width=w, interpolation=cv2.INTER_LINEAR))
    if aug.affine_p > 0:
        steps.append(
            A.Affine(
                scale=(1 - aug.scale, 1 + aug.scale),
                translate_percent=(-aug.translate, aug.translate),
                border_mode=cv2.BORDER_CONSTANT,
                fill=FILL,
                p=aug.affine_p,
            )
        )
    if aug.flip > 0:
        steps.append(A.HorizontalFlip(p=aug.flip))
    if aug.hsv_p > 0:
        steps.append(
            A.HueSaturationValue(
                hue_shift_limit=aug.hsv_h,
                sat_shift_limit=aug.hsv_s,
                val_shift_limit=aug.hsv_v,
                p=aug.hsv_p,
            )
        )
    return A.Compose(
        steps,
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["classes"],
            min_visibility=aug.min_visibility,
            min_width=1.0,
            min_height=1.0,
            clip=True,
            filter_invalid_bboxes=True,
        ),
        seed=0,
    )


def apply_transform(
    transform: A.Compose,
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    *,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``transform`` with its generator seeded by ``seed``.

    Args:
        transform: from :func:`build_transform`.
        image: RGB ``uint8`` ``[H, W, 3]``.
        boxes: ``[N, 4]`` float xyxy, pixels of ``image``, inside the image.
        classes: ``[N]`` int class indices.
        seed: the sample's seed (same seed, same result).

    Returns:
        ``(image, boxes, classes)`` at the network size; boxes ``[N', 4]`` float32 xyxy pixels.
    """
    transform.set_random_seed(int(seed) % 2**32)
    out = transform(image=image, bboxes=boxes.reshape(-1, 4), classes=classes.reshape(-1))
    out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    out_classes = np.asarray(out["classes"], dtype=np.int64).reshape(-1)
    return out["image"], out_boxes, out_classes
