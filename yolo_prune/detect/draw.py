"""Drawing detections onto images (OpenCV), one stable colour per class."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from yolo_prune.detect.postprocess import Detections


def class_color(index: int) -> tuple[int, int, int]:
    """A BGR colour for class ``index``: hues spread by the golden ratio, so neighbours differ."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    names: Sequence[str] | None = None,
    *,
    thickness: int | None = None,
) -> np.ndarray:
    """A copy of BGR ``image`` ``[H, W, 3]`` with each box and its ``name score`` label drawn.

    Args:
        image: BGR ``uint8`` image the detections refer to (original pixels).
        detections: boxes in that image's pixels.
        names: class names by index; ``None``: the index is shown.
        thickness: line width in pixels; ``None``: scaled to the image size.
    """
    out = image.copy()
    h, w = out.shape[:2]
    t = thickness or max(1, round(min(h, w) / 300))
    font_scale = max(0.4, t / 3)
    rows = zip(
        detections.boxes.tolist(),
        detections.scores.tolist(),
        detections.labels.tolist(),
        strict=True,
    )
    # lowest score first, so where labels overlap (one box, several classes) the best is on top
    for box, score, label in sorted(rows, key=lambda r: r[1]):
        x0, y0, x1, y1 = (round(v) for v in box)
        color = class_color(label)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, t, cv2.LINE_AA)
        text = f"{names[label] if names and label < len(names) else label} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y0 - 2 if y0 - th - base - 2 >= 0 else y0 + th + base + 2
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw + 2, ty + base - 2), color, cv2.FILLED)
        cv2.putText(
            out,
            text,
            (x0 + 1, ty - 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return out
