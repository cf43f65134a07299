"""The paired bootstrap: no difference between a run and itself; a clear one is detected."""

from __future__ import annotations

import contextlib
import io

import pytest
from pycocotools.coco import COCO

from yolo_prune.eval.bootstrap import paired_bootstrap


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
