"""Is one detector really better than another on a small validation set? A paired bootstrap.

On 64 images an AP50 difference of a point can be noise. :func:`paired_bootstrap` resamples the
images with replacement (the same draw for both detectors, so image difficulty cancels), scores
both result sets on each resample with COCOeval, and reports the observed difference with a
percentile confidence interval and the fraction of resamples in which ``a`` beats ``b``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from yolo_prune.eval.coco_map import coco_map


def _resampled(gt: Any, draw: Sequence[int], runs: Sequence[Sequence[dict[str, Any]]]):
    """A COCO ground truth of the drawn images (each draw a new id) and the runs remapped."""
    from pycocotools.coco import COCO

    images, anns, remapped = [], [], [[] for _ in runs]
    by_image = [
        {img: [r for r in run if r["image_id"] == img] for img in set(draw)} for run in runs
    ]
    for new_id, img in enumerate(draw, start=1):
        images.append({**gt.imgs[img], "id": new_id})
        for ann in gt.imgToAnns.get(img, []):
            anns.append({**ann, "id": len(anns) + 1, "image_id": new_id})
        for out, index in zip(remapped, by_image, strict=True):
            out.extend({**r, "image_id": new_id} for r in index[img])
    sample = COCO()
    sample.dataset = {"images": images, "annotations": anns, "categories": gt.dataset["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        sample.createIndex()
    return sample, remapped


def paired_bootstrap(
    gt: Any,
    results_a: Sequence[dict[str, Any]],
    results_b: Sequence[dict[str, Any]],
    image_ids: Sequence[int],
    *,
    stat: str = "AP50",
    samples: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """``stat`` of ``a`` minus ``b`` on ``image_ids``, with a bootstrap interval.

    Args:
        gt: pycocotools ``COCO`` ground truth.
        results_a, results_b: COCO result dicts of the two detectors on those images.
        image_ids: the evaluated images.
        stat: a :func:`~yolo_prune.eval.coco_map.coco_map` figure (``AP``, ``AP50``, ...).
        samples: bootstrap resamples.
        seed: resampling seed.
        level: confidence level of the interval.

    Returns:
        ``{"a", "b", "diff", "low", "high", "p_a_ge_b", "samples", "stat"}``; ``diff`` is the
        observed difference (all images once), ``low``/``high`` the percentile interval of the
        resampled differences, ``p_a_ge_b`` the fraction of resamples with ``a >= b``.
    """
    ids = list(image_ids)
    a = coco_map(gt, results_a, image_ids=ids)[stat] or 0.0
    b = coco_map(gt, results_b, image_ids=ids)[stat] or 0.0
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(samples):
        draw = [ids[i] for i in rng.integers(0, len(ids), len(ids))]
        sample, (ra, rb) = _resampled(gt, draw, [results_a, results_b])
        sa = coco_map(sample, ra)[stat] or 0.0
        sb = coco_map(sample, rb)[stat] or 0.0
        diffs.append(sa - sb)
    d = np.asarray(diffs)
    tail = (1.0 - level) / 2
    return {
        "stat": stat,
        "a": a,
        "b": b,
        "diff": a - b,
        "low": float(np.quantile(d, tail)),
        "high": float(np.quantile(d, 1.0 - tail)),
        "p_a_ge_b": float((d >= 0).mean()),
        "samples": samples,
    }
