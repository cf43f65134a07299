"""Video files in and out through OpenCV, frames as BGR ``uint8`` ``[H, W, 3]`` arrays.

:class:`VideoReader` iterates over the frames of a file; :class:`VideoWriter` writes frames to
a temporary file beside the destination and renames it into place on a clean close, so an
interrupted run never leaves a truncated video under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from yolo_prune.errors import DataError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"})

# Codec per container that the pip OpenCV wheels can encode without extra libraries.
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def is_video_path(path: str | Path) -> bool:
    """Whether ``path`` has one of the :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class VideoReader:
    """The frames of a video file, in order.

    Attributes:
        path: the file.
        fps: frames per second the container declares (30.0 if it declares none).
        width, height: frame size in pixels.
        frame_count: frames the container declares (may be an estimate for some formats; the
            number actually read is what iteration yields).

    Raises:
        DataError: the file does not exist or OpenCV cannot open it as a video.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError("no such video file; check the path", path=self.path)
        if self.path.is_dir():
            raise DataError("is a folder, expected a video file", path=self.path)
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            self._cap.release()
            raise DataError(
                "OpenCV cannot open it as a video (corrupt or unknown codec?)", path=self.path
            )
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.frame_count = max(int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            ok, frame = self._cap.read()
            if not ok:
                return
            yield frame

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """Writes BGR frames of one size to a video file, atomically.

    Args:
        path: destination; its extension picks the codec (``.mp4``: MPEG-4 part 2, ``.avi``:
            Motion JPEG).
        fps: frames per second to declare.
        size: ``(width, height)`` of every frame in pixels.

    Raises:
        DataError: the container is not one OpenCV can write here, or a frame has the wrong
            size.
    """

    def __init__(self, path: str | Path, *, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _FOURCC:
            raise DataError(
                f"cannot write {suffix or 'extension-less'} videos; use one of "
                + ", ".join(sorted(_FOURCC)),
                path=self.path,
            )
        self.size = (int(size[0]), int(size[1]))
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=suffix, dir=self.path.parent
        )
        os.close(fd)
        self._tmp = Path(tmp)
        fourcc = cv2.VideoWriter_fourcc(*_FOURCC[suffix])
        self._writer = cv2.VideoWriter(str(self._tmp), fourcc, float(fps), self.size)
        if not self._writer.isOpened():
            self._discard()
            raise DataError(f"OpenCV cannot open a {_FOURCC[suffix]} writer", path=self.path)

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR ``uint8`` frame ``[H, W, 3]`` of the writer's size."""
        h, w = frame.shape[:2]
        if (w, h) != self.size:
            raise DataError(
                f"frame {self.frames} is {w}x{h}, but the video is {self.size[0]}x{self.size[1]}",
                path=self.path,
            )
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it to its destination."""
        self._writer.release()
        os.replace(self._tmp, self.path)

    def _discard(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.release()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()
