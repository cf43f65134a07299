"""The paired bootstrap: no difference between a run and itself; a clear one is detected."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from yolo_prune.eval.bootstrap import _evaluated, _stat_of_draw, paired_bootstrap
from yolo_prune.eval.coco_map import coco_map


def _gt(n: int) -> COCO:
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "width": 100, "height": 100} for i in range(1, n + 1)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900,
             "iscrowd": 0}
            for i in range(1, n + 1)
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _hits(ids):
    return [{"image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9} for i in ids]


def test_a_run_against_itself_differs_by_nothing():
    gt = _gt(12)
    res = _hits(range(1, 13))
    out = paired_bootstrap(gt, res, res, list(range(1, 13)), samples=20)
    assert out["diff"] == 0 and out["low"] == 0 and out["high"] == 0 and out["p_a_ge_b"] == 1


def test_finding_every_object_beats_finding_half():
    gt = _gt(12)
    out = paired_bootstrap(gt, _hits(range(1, 13)), _hits(range(1, 7)), list(range(1, 13)),
                           samples=30)  # fmt: skip
    assert out["a"] == pytest.approx(1.0) and out["b"] == pytest.approx(0.5, abs=0.02)
    assert out["low"] > 0 and out["p_a_ge_b"] == 1.0


def _resampled_gt(gt: Any, draw: Sequence[int], runs: Sequence[Sequence[dict[str, Any]]]):
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


def test_a_resample_scores_exactly_as_a_ground_truth_built_from_the_drawn_images():
    # The reference: a new COCO ground truth of the drawn images (each draw a new id, repeats
    # included) scored from scratch. Random boxes in 3 categories, several per image, misses,
    # false positives and crowd-free overlaps, so matching and ranking both matter.
    rng = np.random.default_rng(3)
    n = 15
    gt = COCO()
    anns, results = [], []
    for img in range(1, n + 1):
        for _ in range(int(rng.integers(0, 4))):
            x, y, w, h = (float(v) for v in rng.uniform([0, 0, 5, 5], [60, 60, 40, 40]))
            cat = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            if rng.random() < 0.8:  # found, a little off
                jitter = rng.normal(0, 3, 4)
                results.append({"image_id": img, "category_id": cat, "score": float(rng.random()),
                                "bbox": [x + jitter[0], y + jitter[1], abs(w + jitter[2]) + 1,
                                         abs(h + jitter[3]) + 1]})  # fmt: skip
        for _ in range(int(rng.integers(0, 3))):  # false positives
            results.append({"image_id": img, "category_id": int(rng.integers(1, 4)),
                            "score": float(rng.random()),
                            "bbox": [float(v) for v in rng.uniform([0, 0, 5, 5], [60, 60, 30, 30])]})  # fmt: skip
    gt.dataset = {"images": [{"id": i, "width": 100, "height": 100} for i in range(1, n + 1)],
                  "annotations": anns,
                  "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    ids = list(range(1, n + 1))
    ev = _evaluated(gt, results, ids)
    for seed in range(6):
        positions = np.random.default_rng(seed).integers(0, n, n).tolist()
        sample, (remapped,) = _resampled_gt(gt, [ids[p] for p in positions], [results])
        for stat in ("AP50", "AP"):
            expected = coco_map(sample, remapped)[stat] or 0.0
            assert _stat_of_draw(ev, positions, stat) == pytest.approx(expected, abs=1e-12)
