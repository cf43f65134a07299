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

    Grey images are expanded to three channels and an alpha channel is dropped. Any size that
    OpenCV decodes (up to 2**30 pixels) is read whole: a 10000 x 10000 photo takes about a
    second and 300 MB, and the detector then resizes it to the network input like any other.

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
    # A cut-off PNG is refused before decoding: libpng would print its own complaint on stderr.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size and not _cut_png(data) else None
    if image is None:
        raise DataError(_why_unreadable(data.tobytes()), path=p)
    return image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cut_png(data: np.ndarray) -> bool:
    """A PNG without its closing IEND chunk (looked for at the end first, then anywhere)."""
    if data[:8].tobytes() != _PNG_SIGNATURE:
        return False
    return b"IEND" not in data[-32:].tobytes() and b"IEND" not in data.tobytes()


def _why_unreadable(data: bytes) -> str:
    """The message for bytes OpenCV could not decode: empty, cut off, or not an image."""
    if not data:
        return "not a readable image (the file is empty); is it corrupt or not an image?"
    if data[:3] == b"\xff\xd8\xff" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # No end-of-image marker after the last start-of-scan: the entropy-coded data stops.
        return (
            f"truncated JPEG ({len(data):,} bytes, no end-of-image marker): the file was cut "
            "off while copying or downloading; fetch it again"
        )
    if _cut_png(np.frombuffer(data, dtype=np.uint8)):
        return (
            f"truncated PNG ({len(data):,} bytes, no IEND chunk): the file was cut off while "
            "copying or downloading; fetch it again"
        )
    return "not a readable image (OpenCV cannot decode it); is it corrupt or not an image?"


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
