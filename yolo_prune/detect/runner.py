"""Running a :class:`Detector` over an image, a folder of images or a video file.

:func:`detect_source` writes annotated copies (images, or one ``.mp4`` for a video) and
``detections.json`` to an output folder; the records in it are
``{"image": file name or frame index, "category": name, "category_id": class index,
"bbox": [x, y, w, h] (original pixels), "score": float}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from yolo_prune.data.images import is_image_path, iter_images, list_images, load_image
from yolo_prune.data.video import VideoReader, VideoWriter, is_video_path
from yolo_prune.detect.detector import Detector
from yolo_prune.detect.draw import draw_detections
from yolo_prune.detect.postprocess import Detections
from yolo_prune.errors import DataError
from yolo_prune.utils.io import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

# Formats an annotated image keeps; others (e.g. .tif) are written as .jpg.
_WRITABLE = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class DetectSummary:
    """What :func:`detect_source` did."""

    kind: str  # "image", "folder" or "video"
    images: int = 0  # images or frames processed
    skipped: list[str] = field(default_factory=list)  # files of a folder that were not images
    detections: int = 0  # records written to detections.json
    seconds: float = 0.0  # wall time of the whole run (read, detect, draw, write)
    detect_seconds: float = 0.0  # time inside the detector (pre-process, forward, NMS)
    json_path: Path | None = None  # detections.json
    outputs: list[Path] = field(default_factory=list)  # annotated files written

    @property
    def fps(self) -> float:
        """Images (frames) per second of the whole run."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def detect_fps(self) -> float:
        """Images (frames) per second of the detector alone."""
        return self.images / self.detect_seconds if self.detect_seconds > 0 else 0.0


def detection_records(
    image: str | int, dets: Detections, names: Sequence[str]
) -> list[dict[str, Any]]:
    """``detections.json`` records for the detections on one image or frame."""
    return [
        {
            "image": image,
            "category": names[label] if label < len(names) else str(label),
            "category_id": label,
            "bbox": [round(v, 2) for v in box],
            "score": round(score, 4),
        }
        for box, score, label in zip(
            dets.xywh().tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True
        )
    ]


def source_kind(source: Path) -> str:
    """``"folder"``, ``"video"`` (by extension) or ``"image"``.

    Raises:
        DataError: ``source`` does not exist.
    """
    if not source.exists():
        raise DataError("no such image, folder or video; check the path", path=source)
    if source.is_dir():
        return "folder"
    return "video" if is_video_path(source) else "image"


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(total: int | None, unit: str, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc="detect", dynamic_ncols=True)


def _write_image(path: Path, image: np.ndarray) -> Path:
    if path.suffix.lower() not in _WRITABLE:
        path = path.with_suffix(".jpg")
    ok, buf = cv2.imencode(path.suffix, image)
    if not ok:
        raise DataError(f"OpenCV cannot encode the annotated image as {path.suffix}", path=path)
    atomic_write_bytes(path, buf.tobytes())
    return path


def detect_source(
    detector: Detector,
    source: str | Path,
    out: str | Path,
    *,
    names: Sequence[str],
    batch_size: int = 1,
    max_frames: int | None = None,
    save: bool = True,
    progress: bool = False,
) -> DetectSummary:
    """Detect objects in an image, every image of a folder, or every frame of a video.

    Args:
        detector: the detector to run.
        source: an image file, a folder (not recursive) or a video file (by extension).
        out: output folder (created): annotated images under their own names, or
            ``<video stem>.mp4`` with the source's frame size and rate; ``detections.json``.
        names: class names by index.
        batch_size: images (frames) per forward pass.
        max_frames: stop a video after this many frames.
        save: write annotated images / video (``detections.json`` is always written).
        progress: show a tqdm bar (folders and videos).

    Raises:
        DataError: the source is missing or unreadable (a single image, a video, or a folder
            without any readable image). Unreadable files inside a folder are skipped with a
            warning naming each.
    """
    src, dest = Path(source), Path(out)
    kind = source_kind(src)
    summary = DetectSummary(kind=kind)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()

    def detect(images: list[np.ndarray]) -> list[Detections]:
        t = time.perf_counter()
        dets = detector(images)
        summary.detect_seconds += time.perf_counter() - t
        return dets

    if kind == "video":
        with contextlib.ExitStack() as stack:
            reader = stack.enter_context(VideoReader(src))
            total = reader.frame_count or None
            if max_frames is not None:
                total = min(total, max_frames) if total else max_frames
            writer = None
            if save:
                video_path = dest / f"{src.stem}.mp4"
                size = (reader.width, reader.height)
                writer = stack.enter_context(VideoWriter(video_path, fps=reader.fps, size=size))
                summary.outputs.append(video_path)
            frames = (f for i, f in enumerate(reader) if max_frames is None or i < max_frames)
            with _progress(total, "frame", progress) as bar:
                for chunk in _batches(frames, batch_size):
                    for frame, d in zip(chunk, detect(chunk), strict=True):
                        records.extend(detection_records(summary.images, d, names))
                        if writer is not None:
                            writer.write(draw_detections(frame, d, names))
                        summary.images += 1
                    if bar is not None:
                        bar.update(len(chunk))
            if summary.images == 0:
                raise DataError("no frame could be read from the video", path=src)
    else:
        if kind == "folder":
            paths = list_images(src, all_files=True)
        else:
            if not is_image_path(src):
                logger.info("%s has no image extension; reading it as an image anyway", src)
            load_image(src)  # a single unreadable image is an error, not a skip
            paths = [src]
        dest.mkdir(parents=True, exist_ok=True)
        with _progress(
            len(paths) if kind == "folder" else None, "img", progress and kind == "folder"
        ) as bar:
            for chunk in _batches(paths, batch_size):
                loaded = list(iter_images(chunk))
                summary.skipped.extend(p.name for p in chunk if p not in {q for q, _ in loaded})
                if loaded:
                    for (path, image), d in zip(
                        loaded, detect([im for _, im in loaded]), strict=True
                    ):
                        records.extend(detection_records(path.name, d, names))
                        if save:
                            drawn = draw_detections(image, d, names)
                            summary.outputs.append(_write_image(dest / path.name, drawn))
                        summary.images += 1
                if bar is not None:
                    bar.update(len(chunk))
        if summary.images == 0:
            raise DataError("none of its files is a readable image", path=src)
    summary.json_path = dest / "detections.json"
    # One record per line: readable, diffable, and still one JSON list.
    text = "[\n" + ",\n".join(json.dumps(r) for r in records) + ("\n]\n" if records else "]\n")
    atomic_write_text(summary.json_path, text)
    summary.detections = len(records)
    summary.seconds = time.perf_counter() - start
    return summary
