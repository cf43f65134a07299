"""Detection datasets with COCO ground truth: COCO JSON + images, or the YOLO txt layout.

Both layouts become one :class:`~yolo_prune.data.ground_truth.DetectionDataset`: a pycocotools
``COCO`` object holding the ground truth, the list of images to run on, and the mapping from the
model's class index to the dataset's category id (COCO's 80 training classes use ids 1..90 with
gaps). Evaluation never needs to know which layout the data came from. The dataset type and the
COCO category tables live in :mod:`yolo_prune.data.ground_truth`, below both readers, and are
re-exported here.

Layouts :func:`load_detection_dataset` recognises under a root folder::

    annotations/instances_<split>.json + images/<split>/   (COCO JSON, e.g. coco128)
    annotations/instances_<split>.json + <split>/          (COCO JSON, the official layout)
    images/<split>/*.jpg + labels/<split>/*.txt            (YOLO txt; see yolo_prune.data.yolo_txt)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yolo_prune.data.ground_truth import (
    COCO80_TO_91,
    COCO_NAMES,
    DetectionDataset,
    ImageRecord,
    build_coco,
)
from yolo_prune.data.yolo_txt import load_yolo_txt
from yolo_prune.errors import DataError

__all__ = [  # the ground-truth names are re-exported: callers import them from here
    "COCO80_TO_91",
    "COCO_NAMES",
    "DetectionDataset",
    "ImageRecord",
    "build_coco",
    "choose_split",
    "class_to_category",
    "is_detection_dir",
    "load_coco_json",
    "load_detection_dataset",
]

logger = logging.getLogger(__name__)


def class_to_category(categories: Sequence[dict[str, Any]]) -> list[int]:
    """Category id of each model class index for a COCO JSON's ``categories``.

    When every category id is one of COCO's 80 training categories (the whole set or a subset),
    model classes follow COCO's 80-class order (:data:`COCO80_TO_91`), so a COCO-trained model
    scores correctly on a JSON that lists only some categories. Otherwise class ``k`` is the
    ``k``-th category in id order.
    """
    ids = sorted(int(c["id"]) for c in categories)
    if ids and set(ids) <= set(COCO80_TO_91):
        return list(COCO80_TO_91)
    return ids


def load_coco_json(images_dir: str | Path, annotation_file: str | Path) -> DetectionDataset:
    """A dataset from a COCO instances JSON and the folder holding its images.

    Images listed in the JSON but missing from the folder are left out with one warning.

    Raises:
        DataError: the JSON or the folder is missing, or the JSON is not COCO instances.
    """
    ann_path, root = Path(annotation_file), Path(images_dir)
    if not ann_path.is_file():
        raise DataError("no such annotation file; check the path", path=ann_path)
    if not root.is_dir():
        raise DataError("no such image folder; check the path", path=root)
    try:
        data = json.loads(ann_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", path=ann_path) from None
    if not isinstance(data, dict):
        raise DataError("not a COCO instances file: expected a JSON object", path=ann_path)
    missing_keys = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing_keys:
        raise DataError(
            f"not a COCO instances file: no {', '.join(missing_keys)} key", path=ann_path
        )
    records, missing = [], []
    for img in data["images"]:
        path = root / img["file_name"]
        if path.is_file():
            records.append(ImageRecord(int(img["id"]), path, int(img["width"]), int(img["height"])))
        else:
            missing.append(img["file_name"])
    if missing:
        logger.warning(
            "%s: %d of %d images listed are not in %s (first: %s); evaluating the others",
            ann_path.name,
            len(missing),
            len(data["images"]),
            root,
            missing[0],
        )
    if not records:
        raise DataError(f"none of the images it lists is in {root}", path=ann_path)
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    return DetectionDataset(
        build_coco(data),
        records,
        category_ids=class_to_category(data["categories"]),
        name=f"COCO JSON {ann_path.name}",
    )


def _splits(root: Path) -> list[str]:
    names: set[str] = set()
    if (root / "images").is_dir():
        names.update(p.name for p in (root / "images").iterdir() if p.is_dir())
    if (root / "annotations").is_dir():
        for p in (root / "annotations").glob("instances_*.json"):
            split = p.stem[len("instances_") :]
            if (root / "images" / split).is_dir() or (root / split).is_dir():
                names.add(split)
    return sorted(names)


def is_detection_dir(root: str | Path) -> bool:
    """Whether ``root`` looks like a detection dataset :func:`load_detection_dataset` reads."""
    r = Path(root)
    return (
        r.is_dir()
        and bool(_splits(r))
        and ((r / "labels").is_dir() or (r / "annotations").is_dir())
    )


def choose_split(root: str | Path, split: str | None = None) -> str:
    """The split to evaluate: ``split`` if given, else the first ``val*``, then ``test*`` split,
    else the only one.

    Raises:
        DataError: ``split`` is not there, or there is no obvious choice.
    """
    r = Path(root)
    available = _splits(r)
    if not available:
        raise DataError(
            "no dataset split found: expected images/<split>/ with labels/<split>/ (YOLO txt) "
            "or annotations/instances_<split>.json (COCO)",
            path=r,
        )
    if split is not None:
        if split not in available:
            raise DataError(f"no split {split!r}; this dataset has: {', '.join(available)}", path=r)
        return split
    for prefix in ("val", "test"):
        found = [s for s in available if s.startswith(prefix)]
        if found:
            return found[0]
    if len(available) == 1:
        return available[0]
    raise DataError(f"which split? this dataset has: {', '.join(available)}", path=r)


def load_detection_dataset(
    root: str | Path,
    *,
    split: str | None = None,
    category_ids: Sequence[int] | None = None,
) -> DetectionDataset:
    """The dataset under ``root`` (COCO JSON preferred over YOLO txt where both exist).

    Args:
        root: dataset folder (see the module docstring for the layouts).
        split: e.g. ``val2017``; ``None`` picks one (see :func:`choose_split`).
        category_ids: for YOLO txt labels, the category id of each class index; ``None`` means
            COCO-derived labels (:data:`COCO80_TO_91`). Ignored for COCO JSON, which carries
            its own categories.

    Raises:
        DataError: ``root`` is missing or holds no dataset, a label line is corrupt, ...
    """
    r = Path(root)
    if not r.exists():
        raise DataError("no such dataset folder; check the path", path=r)
    if not r.is_dir():
        raise DataError("is a file, expected a dataset folder", path=r)
    split = choose_split(r, split)
    ann = r / "annotations" / f"instances_{split}.json"
    if ann.is_file():
        images = r / "images" / split if (r / "images" / split).is_dir() else r / split
        return load_coco_json(images, ann)
    return load_yolo_txt(r, split=split, category_ids=category_ids)
