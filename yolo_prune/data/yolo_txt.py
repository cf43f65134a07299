"""The YOLO txt layout, turned into COCO ground truth on the fly.

Layout under a root folder::

    images/<split>/<stem>.jpg
    labels/<split>/<stem>.txt    one object per line: class cx cy w h

with ``cx cy w h`` the box centre and size as fractions of the image width and height. An image
without a label file (or with an empty one) is a background image: it has no objects, and every
detection on it is a false positive. Image sizes are read from the image files.
"""

from __future__ import annotations

import logging
import math
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
from yolo_prune.data.images import image_size, list_images
from yolo_prune.errors import DataError

logger = logging.getLogger(__name__)

# Slack for normalised coordinates written with rounding (e.g. 1.0000001).
_EPS = 1e-3


def parse_label_file(
    path: str | Path, *, num_classes: int | None = None
) -> list[tuple[int, float, float, float, float]]:
    """The objects of one YOLO label file as ``(class, cx, cy, w, h)``, normalised.

    This is the one reader of YOLO label files: evaluation (:func:`yolo_txt_to_coco`) and
    training (:class:`~yolo_prune.data.train_dataset.TrainDataset`) both call it, so a file
    is accepted or refused the same way whatever reads it. Blank lines are ignored; an empty
    file (like a missing one, which callers handle) means an image with no objects.
    Coordinates may exceed [0, 1] by up to 1e-3 (rounding in the tool that wrote them).

    Args:
        path: the ``.txt`` label file.
        num_classes: class ids must lie in ``[0, num_classes)``; ``None``: any id >= 0.

    Returns:
        One ``(class, cx, cy, w, h)`` per object, in file order: the box centre and size as
        fractions of the image width and height.

    Raises:
        DataError: naming the file and line, for a line that is not ``class cx cy w h`` with an
            integer class in ``[0, num_classes)``, finite coordinates in [0, 1] and a positive
            width and height; or a file that cannot be read as UTF-8 text.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError("not a text label file (not UTF-8)", path=p) from None
    except OSError as exc:
        raise DataError(f"cannot read the label file ({exc.strerror or exc})", path=p) from None
    bound = f"[0, {num_classes})" if num_classes is not None else "0 or more"
    objects = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 5:
            raise DataError(
                f"expected 5 fields 'class cx cy w h', found {len(fields)}: {line[:60]!r}",
                path=p,
                line=number,
            )
        try:
            cls = int(fields[0])
        except ValueError:
            raise DataError(
                f"class {fields[0][:20]!r} is not an integer class index; expected an integer "
                f"in {bound}",
                path=p,
                line=number,
            ) from None
        if cls < 0 or (num_classes is not None and cls >= num_classes):
            raise DataError(f"class {cls} is out of range; expected {bound}", path=p, line=number)
        box = " ".join(fields[1:])[:60]
        try:
            cx, cy, w, h = (float(f) for f in fields[1:])
        except ValueError:
            raise DataError(
                f"box {box!r} is not four numbers cx cy w h", path=p, line=number
            ) from None
        values = (cx, cy, w, h)
        if not all(math.isfinite(v) for v in values):
            raise DataError(
                f"box {box} holds a value that is not a finite number; expected four numbers "
                "in [0, 1] (did the tool that wrote the labels divide by zero?)",
                path=p,
                line=number,
            )
        if w <= 0 or h <= 0:
            raise DataError(
                f"box has a {'negative' if min(w, h) < 0 else 'zero'} width or height "
                f"({w} x {h}); expected both > 0: the last two fields are the box size as "
                "fractions of the image",
                path=p,
                line=number,
            )
        if not all(-_EPS <= v <= 1 + _EPS for v in values):
            raise DataError(
                f"box {box} is outside [0, 1]; YOLO labels are normalised by the image width "
                "and height (divide pixel coordinates by them)",
                path=p,
                line=number,
            )
        objects.append((cls, cx, cy, w, h))
    return objects


def _image_ids(images: Sequence[Path]) -> list[int]:
    # COCO-derived files are named by their COCO id (000000000139.jpg); keep those ids so that
    # results can be matched with the original annotations. Otherwise number from 1.
    stems = [p.stem for p in images]
    if all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(images) + 1))


def yolo_txt_to_coco(
    images_dir: str | Path,
    labels_dir: str | Path,
    *,
    category_ids: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[ImageRecord]]:
    """The COCO-format ground truth of a YOLO txt split, and its readable images.

    Args:
        images_dir: folder of images.
        labels_dir: folder of ``<image stem>.txt`` label files (may be missing: all background).
        category_ids: category id of each class index; ``None`` means COCO-derived labels
            (:data:`COCO80_TO_91`).
        names: category names, one per class index (COCO's when ``category_ids`` is ``None``).

    Returns:
        ``(dataset, records)``: the COCO dict (images, annotations with ``bbox`` ``[x, y, w, h]``
        in pixels, categories) and one :class:`ImageRecord` per image, in file-name order.
        Unreadable images are left out with a warning.

    Raises:
        DataError: the image folder is missing, or a label line is corrupt (file and line).
    """
    ids = list(COCO80_TO_91) if category_ids is None else [int(c) for c in category_ids]
    if names is None:
        names = COCO_NAMES if category_ids is None else [f"class{k}" for k in range(len(ids))]
    if len(names) != len(ids):
        raise DataError(f"{len(names)} names for {len(ids)} categories", path=images_dir)
    paths = list_images(images_dir)
    labels = Path(labels_dir)
    image_ids = _image_ids(paths)
    records, images, annotations = [], [], []
    for image_id, path in zip(image_ids, paths, strict=True):
        try:
            width, height = image_size(path)
        except DataError as exc:
            logger.warning("skipping %s", exc)
            continue
        records.append(ImageRecord(image_id, path, width, height))
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        label_file = labels / f"{path.stem}.txt"
        if not label_file.is_file():
            continue
        for cls, cx, cy, w, h in parse_label_file(label_file, num_classes=len(ids)):
            bw, bh = w * width, h * height
            x0, y0 = (cx - w / 2) * width, (cy - h / 2) * height
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[cls],
                    "bbox": [x0, y0, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    if labels.is_dir():
        stems = {p.stem for p in paths}
        orphans = sorted(p.name for p in labels.glob("*.txt") if p.stem not in stems)
        if orphans:
            logger.warning(
                "%s: %d label files have no image (first: %s); ignored",
                labels,
                len(orphans),
                orphans[0],
            )
    categories = [
        {"id": i, "name": n, "supercategory": ""} for i, n in zip(ids, names, strict=True)
    ]
    dataset = {
        "info": {"description": f"converted from YOLO txt labels in {labels}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return dataset, records


def load_yolo_txt(
    root: str | Path,
    *,
    split: str,
    category_ids: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> DetectionDataset:
    """The ``split`` of a YOLO txt dataset under ``root`` as a :class:`DetectionDataset`.

    Raises:
        DataError: ``root/images/<split>`` is missing or has no images, or a label line is
            corrupt.
    """
    r = Path(root)
    images_dir = r / "images" / split
    if not images_dir.is_dir():
        raise DataError(f"no images/{split} folder; expected images/<split>/*.jpg", path=r)
    labels_dir = r / "labels" / split
    if not labels_dir.is_dir():
        logger.warning("%s has no labels/%s folder: every image is a background image", r, split)
    dataset, records = yolo_txt_to_coco(
        images_dir, labels_dir, category_ids=category_ids, names=names
    )
    if not records:
        raise DataError(f"no readable images in images/{split}", path=r)
    return DetectionDataset(
        build_coco(dataset),
        records,
        category_ids=[c["id"] for c in dataset["categories"]],
        name=f"YOLO txt {r.name}/{split}",
    )
