"""COCO box mAP of detections, computed by pycocotools' ``COCOeval``.

Detections are COCO "results": ``{"image_id", "category_id", "bbox": [x, y, w, h] (pixels),
"score"}`` dicts. :func:`detections_to_coco` builds them from :class:`Detections`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from yolo_prune.detect.postprocess import Detections

logger = logging.getLogger(__name__)

# Names of COCOeval.stats for bounding boxes, in order.
STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


def detections_to_coco(
    image_id: int, detections: Detections, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO result dicts for the detections on one image.

    Args:
        image_id: the image's COCO id.
        detections: boxes in the image's original pixels.
        category_ids: ``category_ids[k]`` is the category id of class index ``k``.

    Raises:
        ValueError: a class index has no category id (the model has more classes than the
            dataset).
    """
    labels = detections.labels.tolist()
    if labels and max(labels) >= len(category_ids):
        raise ValueError(
            f"class index {max(labels)} has no category id ({len(category_ids)} categories)"
        )
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[label]),
            "bbox": [round(v, 3) for v in box],
            "score": round(score, 5),
        }
        for box, score, label in zip(
            detections.xywh().tolist(), detections.scores.tolist(), labels, strict=True
        )
    ]


def coco_map(
    gt: Any,
    results: Sequence[dict[str, Any]],
    *,
    image_ids: Iterable[int] | None = None,
) -> dict[str, float | None]:
    """Box AP/AR of ``results`` against ground truth ``gt`` (a pycocotools ``COCO``).

    Args:
        gt: ground truth.
        results: COCO result dicts (see module docstring); may be empty.
        image_ids: evaluate only these images (default: every image of ``gt``); images without
            any detection count as misses.

    Returns:
        :data:`STAT_NAMES` -> value in [0, 1], or ``None`` where COCOeval has nothing to
        measure (e.g. ``APs`` with no small objects); all 0.0 when there are no results.
    """
    from pycocotools.cocoeval import COCOeval

    ids = sorted(set(image_ids)) if image_ids is not None else sorted(gt.getImgIds())
    if not results:
        logger.warning("no detections to score: every AP is 0")
        return dict.fromkeys(STAT_NAMES, 0.0)
    log = io.StringIO()
    # pycocotools prints its progress and summary; keep it for the debug log instead.
    with contextlib.redirect_stdout(log):
        dt = gt.loadRes(list(results))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug("COCOeval:\n%s", log.getvalue())
    return {
        name: (float(v) if v >= 0 else None) for name, v in zip(STAT_NAMES, ev.stats, strict=True)
    }
