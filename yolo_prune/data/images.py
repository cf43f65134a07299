"""Reading images with errors a user can act on, and listing the images of a folder.

Images are returned as OpenCV gives them: ``uint8`` arrays ``[H, W, 3]`` in BGR order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from yolo_prune.errors import DataError

logger = logging.getLogger(__name__)

# Extensions OpenCV decodes everywhere; used to tell images from other files in a folder.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pbm", ".pgm", ".ppm"}
)


def is_image_path(path: str | Path) -> bool:
    """Whether ``path`` has one of the :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR ``uint8`` ``[H, W, 3]``.

    Grey images are expanded to three channels and an alpha channel is dropped.

    Raises:
        DataError: the file does not exist, is a folder, or cannot be decoded as an image.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("no such image file; check the path", path=p)
    if p.is_dir():
        raise DataError("is a folder, expected an image file", path=p)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror})", path=p) from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        what = "the file is empty" if not data.size else "OpenCV cannot decode it"
        raise DataError(f"not a readable image ({what}); is it corrupt or not an image?", path=p)
    return image


def list_images(folder: str | Path, *, all_files: bool = False) -> list[Path]:
    """Files of ``folder`` (not recursive, hidden files left out), sorted by name.

    Args:
        folder: the folder to list.
        all_files: list every regular file, not only those with an image extension (so that
            a caller can try each one and warn about those that are not images).

    Raises:
        DataError: ``folder`` does not exist or is not a folder.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError("no such folder; check the path", path=root)
    if not root.is_dir():
        raise DataError("is a file, expected a folder of images", path=root)
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and (all_files or is_image_path(p))
    )


def iter_images(paths: list[Path]) -> Iterator[tuple[Path, np.ndarray]]:
    """``(path, BGR image)`` for each path that can be read; the others are skipped.

    Every skipped file is logged as a warning that names it and says why, so that one bad
    file in a folder of thousands does not stop a run.
    """
    for path in paths:
        try:
            image = load_image(path)
        except DataError as exc:
            logger.warning("skipping %s", exc)
            continue
        yield path, image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file in pixels (decodes the file)."""
    h, w = load_image(path).shape[:2]
    return w, h
