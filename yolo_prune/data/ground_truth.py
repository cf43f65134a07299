"""Detection ground truth in COCO form: what both dataset layouts are turned into.

A :class:`DetectionDataset` is a pycocotools ``COCO`` object holding the ground truth, the list
of images to run on, and the mapping from the model's class index to the dataset's category id
(COCO's 80 training classes use ids 1..90 with gaps, :data:`COCO80_TO_91`). The readers of each
layout (:mod:`yolo_prune.data.coco` for COCO JSON, :mod:`yolo_prune.data.yolo_txt` for YOLO txt)
build one; evaluation never needs to know which layout the data came from.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# COCO category id of each of the 80 classes Darknet's COCO models predict, in class-index order
# (coco.names order). COCO's ids run 1..90 with gaps where categories were dropped.
COCO80_TO_91: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

# COCO's own category names, in the same order (coco.names spells a few differently).
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class ImageRecord:
    """One image of a detection dataset."""

    image_id: int  # COCO image id (the key of its annotations and of detections on it)
    path: Path  # the image file
    width: int  # pixels
    height: int  # pixels


class DetectionDataset:
    """Images plus COCO ground truth, whatever layout they were stored in.

    Args:
        gt: pycocotools ``COCO`` holding images, annotations and categories.
        images: the images to run on, in order.
        category_ids: ``category_ids[k]`` is the dataset category id of model class ``k``.
        name: a short description for logs and reports (layout and split).
    """

    def __init__(
        self,
        gt: Any,
        images: Sequence[ImageRecord],
        *,
        category_ids: Sequence[int],
        name: str,
    ):
        self.gt = gt
        self.images = list(images)
        self.category_ids = list(category_ids)
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.images)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.images[index]

    @property
    def num_annotations(self) -> int:
        return len(self.gt.getAnnIds(imgIds=[r.image_id for r in self.images]))

    def __repr__(self) -> str:
        return (
            f"DetectionDataset({self.name}: {len(self)} images, {len(self.category_ids)} classes)"
        )


def build_coco(dataset: dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` from a COCO-format dict, without pycocotools' printing."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt
