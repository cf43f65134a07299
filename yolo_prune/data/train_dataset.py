"""A torch Dataset for training detectors: image tensors and boxes in network-input pixels.

Reads either layout :mod:`yolo_prune.data.coco` knows (COCO JSON, or YOLO txt labels). YOLO label
files are read by :func:`yolo_prune.data.yolo_txt.parse_label_file`, the same reader evaluation
uses, so training and evaluation accept and refuse the same files:

* a malformed label line (wrong field count, not numbers, a class not in ``[0, classes)``, a
  coordinate that is not finite or not in [0, 1], a width or height that is not positive) is a
  :class:`~yolo_prune.errors.DataError` naming the file and line, before any training starts;
* an empty or missing label file: the image is a background image (no objects);
* a box reaching outside the image: clipped to the image (with a warning), or dropped if
  nothing is left;
* an image that cannot be decoded: the next image in the list is used in its place.

With ``AugmentConfig.mosaic`` > 0, that fraction of samples are mosaics: four images (the one
asked for and three drawn at random) tiled around a random centre, then transformed as one.

Samples are a pure function of ``(seed, epoch, index)`` (see :func:`sample_seed`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from yolo_prune.data.augment import FILL, AugmentConfig, apply_transform, build_transform
from yolo_prune.data.coco import choose_split, load_coco_json
from yolo_prune.data.images import list_images, load_image
from yolo_prune.data.yolo_txt import parse_label_file
from yolo_prune.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRecord:
    """One usable training image and its objects."""

    path: Path  # the image file
    classes: np.ndarray  # [N] int64 class indices
    boxes: np.ndarray  # [N, 4] float32 xyxy; normalised (0..1) if ``normalised`` else pixels
    normalised: bool  # YOLO txt boxes are fractions of the image size, COCO JSON ones pixels


def _where(path: Path, line: int | None = None) -> str:
    return str(DataError("", path=path, line=line)).rstrip()


def _clipped_xyxy(
    objects: list[tuple[int, float, float, float, float]], path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """``(classes [N], boxes [N, 4] xyxy normalised, clipped to [0, 1])`` of parsed labels.

    A box reaching outside the image is clipped (with a warning past the 1e-3 that rounding
    explains) and dropped when nothing of it is left.
    """
    classes, boxes = [], []
    for cls, cx, cy, w, h in objects:
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        cx0, cy0 = min(max(x0, 0.0), 1.0), min(max(y0, 0.0), 1.0)
        cx1, cy1 = min(max(x1, 0.0), 1.0), min(max(y1, 0.0), 1.0)
        box = f"{cls} {cx:g} {cy:g} {w:g} {h:g}"
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            logger.warning("%s box %s lies outside the image; dropped", _where(path), box)
            continue
        if max(abs(cx0 - x0), abs(cy0 - y0), abs(cx1 - x1), abs(cy1 - y1)) > 1e-3:
            logger.warning("%s box %s reaches outside the image; clipped", _where(path), box)
        classes.append(cls)
        boxes.append((cx0, cy0, cx1, cy1))
    return (
        np.asarray(classes, dtype=np.int64).reshape(-1),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    )


def _yolo_records(root: Path, split: str, num_classes: int) -> list[TrainRecord]:
    images_dir, labels_dir = root / "images" / split, root / "labels" / split
    if not labels_dir.is_dir():
        logger.warning("%s has no labels/%s folder: every image is a background image", root, split)
    records = []
    for path in list_images(images_dir):
        label = labels_dir / f"{path.stem}.txt"
        # No label file, like an empty one, is a background image.
        objects = parse_label_file(label, num_classes=num_classes) if label.is_file() else []
        classes, boxes = _clipped_xyxy(objects, label)
        records.append(TrainRecord(path, classes, boxes, normalised=True))
    return records


def _coco_records(root: Path, split: str, num_classes: int) -> list[TrainRecord]:
    ann = root / "annotations" / f"instances_{split}.json"
    images = root / "images" / split if (root / "images" / split).is_dir() else root / split
    data = load_coco_json(images, ann)
    index = {cat: k for k, cat in enumerate(data.category_ids)}
    records = []
    for rec in data.images:
        classes, boxes, bad = [], [], False
        for a in data.gt.imgToAnns.get(rec.image_id, []):
            if a.get("iscrowd", 0):
                continue
            cls = index.get(int(a["category_id"]))
            if cls is None or cls >= num_classes:
                logger.warning(
                    "%s annotation %s of image %s: category %s is not one of the model's %d "
                    "classes; image skipped",
                    _where(ann),
                    a.get("id"),
                    rec.path.name,
                    a["category_id"],
                    num_classes,
                )
                bad = True
                break
            x, y, w, h = (float(v) for v in a["bbox"])
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, rec.width), min(y + h, rec.height)
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            classes.append(cls)
            boxes.append((x0, y0, x1, y1))
        if not bad:
            records.append(
                TrainRecord(
                    rec.path,
                    np.asarray(classes, dtype=np.int64).reshape(-1),
                    np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    normalised=False,
                )
            )
    return records


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (independent of process/worker)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class TrainDataset(Dataset):
    """Detection training samples at the network size.

    Args:
        root: dataset folder (COCO JSON or YOLO txt layout).
        split: e.g. ``train2017``; ``None`` picks the first ``train*`` split, else the only one.
        size: network input ``(height, width)`` or a square side, pixels.
        num_classes: the model's classes; a YOLO label outside ``[0, num_classes)`` is an error.
        augment: random transforms; ``None`` for none (resize/letterbox only).
        letterbox: keep aspect ratios (pad with grey) instead of stretching.
        seed: base seed of the per-sample augmentation.
        max_images: keep only the first images (overfitting tests, smoke runs).

    Raises:
        DataError: no dataset there, no usable image in it, or a malformed YOLO label line
            (file and line).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = None,
        size: int | tuple[int, int],
        num_classes: int,
        augment: AugmentConfig | None = None,
        letterbox: bool = False,
        seed: int = 0,
        max_images: int | None = None,
    ):
        r = Path(root)
        if not r.is_dir():
            raise DataError("no such dataset folder; check the path", path=r)
        self.split = choose_split(r, split if split is not None else _train_split(r))
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.num_classes = num_classes
        if (r / "annotations" / f"instances_{self.split}.json").is_file():
            records = _coco_records(r, self.split, num_classes)
        else:
            records = _yolo_records(r, self.split, num_classes)
        if max_images is not None:
            records = records[:max_images]
        if not records:
            raise DataError(f"no usable training image in split {self.split!r}", path=r)
        self.records = records
        self.transform = build_transform(self.size, augment=augment, letterbox=letterbox)
        self.mosaic = augment.mosaic if augment is not None else 0.0
        self.seed = seed
        self.epoch = 0
        self._bad: set[int] = set()
        logger.info(
            "%s/%s: %d training images, %d boxes",
            r.name,
            self.split,
            len(records),
            sum(len(rec.classes) for rec in records),
        )

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of ``epoch`` (call before iterating each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index``: ``(image [3, H, W] float RGB in [0, 1], labels [N, 5])``.

        ``labels`` rows are ``(class, cx, cy, w, h)`` in network-input pixels.
        """
        seed = sample_seed(self.seed, self.epoch, index)
        rng = np.random.default_rng(seed)
        if self.mosaic > 0 and rng.random() < self.mosaic:
            others = rng.integers(0, len(self.records), size=3).tolist()
            rgb, boxes, classes = self._mosaic([index, *others], rng)
        else:
            rgb, boxes, classes = self._load(index)
        image, out_boxes, out_classes = apply_transform(
            self.transform, rgb, boxes, classes, seed=seed
        )
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        b = torch.from_numpy(out_boxes)
        labels = torch.cat(
            (
                torch.from_numpy(out_classes).float()[:, None],
                (b[:, :2] + b[:, 2:]) / 2,
                b[:, 2:] - b[:, :2],
            ),
            dim=1,
        )
        return x, labels

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(RGB image, boxes [N, 4] xyxy pixels inside it, classes [N])`` of ``index``, or
        of the next readable image when it cannot be decoded (with a warning, once)."""
        n = len(self.records)
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                bgr = load_image(self.records[i].path)
            except DataError as exc:
                logger.warning("%s; training on the next image in its place", exc)
                self._bad.add(i)
                continue
            rec = self.records[i]
            h, w = bgr.shape[:2]
            scale = np.array([w, h, w, h], np.float32) if rec.normalised else np.ones(4, np.float32)
            boxes = rec.boxes * scale
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), boxes[keep], rec.classes[keep]
        raise DataError("no image of the dataset can be read", path=self.records[0].path.parent)

    def _mosaic(
        self, indices: list[int], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Four images around a random centre of a ``2s x 2s`` grey canvas (``s`` the longer
        input side), each scaled to longest side ``s``; boxes shifted and clipped with them."""
        s = max(self.size)
        canvas = np.full((2 * s, 2 * s, 3), FILL, dtype=np.uint8)
        xc, yc = (int(v) for v in rng.integers(s // 2, 3 * s // 2, size=2))
        all_boxes, all_classes = [], []
        for k, index in enumerate(indices):
            rgb, boxes, classes = self._load(index)
            h0, w0 = rgb.shape[:2]
            r = s / max(h0, w0)
            w, h = max(1, round(w0 * r)), max(1, round(h0 * r))
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
            boxes = boxes * np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
            # corner of the canvas region (a) and of the image part (b) it shows
            if k == 0:  # top left of the centre
                xa0, ya0, xa1, ya1 = max(xc - w, 0), max(yc - h, 0), xc, yc
                xb0, yb0 = w - (xa1 - xa0), h - (ya1 - ya0)
            elif k == 1:  # top right
                xa0, ya0, xa1, ya1 = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
                xb0, yb0 = 0, h - (ya1 - ya0)
            elif k == 2:  # bottom left
                xa0, ya0, xa1, ya1 = max(xc - w, 0), yc, xc, min(yc + h, 2 * s)
                xb0, yb0 = w - (xa1 - xa0), 0
            else:  # bottom right
                xa0, ya0, xa1, ya1 = xc, yc, min(xc + w, 2 * s), min(yc + h, 2 * s)
                xb0, yb0 = 0, 0
            canvas[ya0:ya1, xa0:xa1] = rgb[yb0 : yb0 + (ya1 - ya0), xb0 : xb0 + (xa1 - xa0)]
            shifted = boxes + np.array([xa0 - xb0, ya0 - yb0] * 2, np.float32)
            shifted[:, 0::2] = shifted[:, 0::2].clip(xa0, xa1)
            shifted[:, 1::2] = shifted[:, 1::2].clip(ya0, ya1)
            keep = (shifted[:, 2] - shifted[:, 0] >= 2) & (shifted[:, 3] - shifted[:, 1] >= 2)
            all_boxes.append(shifted[keep])
            all_classes.append(classes[keep])
        return canvas, np.concatenate(all_boxes), np.concatenate(all_classes)


def _train_split(root: Path) -> str | None:
    # choose_split prefers val*; for training prefer the (first) train* split.
    images = root / "images"
    found = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    found = [s for s in found if s.startswith("train")]
    return found[0] if found else None


def collate_detection(
    batch: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images and keep each image's boxes: ``(images [B, 3, H, W], targets [M, 6])``.

    ``targets`` rows are ``(image index in batch, class, cx, cy, w, h)``, input pixels, the
    format :class:`~yolo_prune.detect.loss.YoloLoss` takes.
    """
    images = torch.stack([x for x, _ in batch])
    rows = [
        torch.cat((torch.full((len(labels), 1), float(i)), labels), dim=1)
        for i, (_, labels) in enumerate(batch)
    ]
    targets = torch.cat(rows) if rows else torch.zeros(0, 6)
    return images, targets
