"""Is one detector really better than another on a small validation set? A paired bootstrap.

On 64 images an AP50 difference of a point can be noise. :func:`paired_bootstrap` resamples the
images with replacement (the same draw for both detectors, so image difficulty cancels), scores
both result sets on each resample with COCOeval, and reports the observed difference with a
percentile confidence interval and the fraction of resamples in which ``a`` beats ``b``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from yolo_prune.eval.coco_map import STAT_NAMES, coco_map


def _evaluated(gt: Any, results: Sequence[dict[str, Any]], ids: Sequence[int]) -> Any:
    """COCOeval of ``results`` on ``ids`` after ``evaluate()`` (per image, category and area
    range: the matching, which does not depend on the other images); None without results."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(list(results)), iouType="bbox")
        ev.params.imgIds = list(ids)
        ev.evaluate()
    return ev


def _stat_of_draw(ev: Any, positions: Sequence[int], stat: str) -> float:
    """``stat`` over the images at ``positions`` of the evaluated ids (repeats count again):
    COCOeval's own accumulate/summarize over the per-image evaluations laid out for the draw,
    so no image is matched twice."""
    if ev is None:
        return 0.0
    pe = ev._paramsEval
    n_img, n_area = len(pe.imgIds), len(pe.areaRng)
    drawn = copy.copy(ev)
    drawn.evalImgs = [
        ev.evalImgs[k * n_area * n_img + a * n_img + i]
        for k in range(len(pe.catIds)) for a in range(n_area) for i in positions
    ]  # fmt: skip
    params = copy.copy(pe)
    params.imgIds = list(range(len(positions)))
    drawn.params, drawn._paramsEval = params, params
    with contextlib.redirect_stdout(io.StringIO()):
        drawn.accumulate()
        drawn.summarize()
    value = float(drawn.stats[STAT_NAMES.index(stat)])
    return value if value >= 0 else 0.0


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

    Each image is matched once (COCOeval's ``evaluate``); a resample only re-accumulates the
    per-image evaluations of the images it drew, as many times as it drew them, which gives
    exactly the figure of a ground truth built from the drawn images (tested) at a fraction of
    the cost (about 0.1 s instead of about 0.6 s per resample on 64 COCO images).

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
    ids = sorted(set(image_ids))
    a = coco_map(gt, results_a, image_ids=ids)[stat] or 0.0
    b = coco_map(gt, results_b, image_ids=ids)[stat] or 0.0
    ev_a, ev_b = _evaluated(gt, results_a, ids), _evaluated(gt, results_b, ids)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(samples):
        positions = rng.integers(0, len(ids), len(ids)).tolist()
        diffs.append(_stat_of_draw(ev_a, positions, stat) - _stat_of_draw(ev_b, positions, stat))
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
