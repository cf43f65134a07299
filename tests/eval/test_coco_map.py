"""COCO mAP through pycocotools: known answers on hand-made ground truth."""

from __future__ import annotations

import pytest
import torch

from yolo_prune.data.coco import build_coco
from yolo_prune.detect import Detections
from yolo_prune.eval.coco_map import STAT_NAMES, coco_map, detections_to_coco


@pytest.fixture()
def gt():
    """Two 100x100 images: image 1 holds a person and a dog, image 2 is background."""
    return build_coco(
        {
            "images": [
                {"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"},
                {"id": 2, "width": 100, "height": 100, "file_name": "b.jpg"},
            ],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 1,
                    "bbox": [10, 10, 40, 40],
                    "area": 1600,
                    "iscrowd": 0,
                },
                {
                    "id": 2,
                    "image_id": 1,
                    "category_id": 18,
                    "bbox": [50, 50, 40, 40],
                    "area": 1600,
                    "iscrowd": 0,
                },
            ],  # fmt: skip
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        }
    )


def _result(image_id, cat, bbox, score=0.9):
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_perfect_detections_score_one(gt):
    m = coco_map(gt, [_result(1, 1, [10, 10, 40, 40]), _result(1, 18, [50, 50, 40, 40])])
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["APs"] is None  # no small objects: undefined, not -1
    assert set(m) == set(STAT_NAMES)


def test_a_loose_box_counts_at_iou_half_but_not_at_075(gt):
    # Shifted by 10 px: IoU = 30*40 / (2*1600 - 1200) = 0.6.
    m = coco_map(gt, [_result(1, 1, [20, 10, 40, 40]), _result(1, 18, [50, 50, 40, 40])])
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(0.5)  # only the dog counts


def test_wrong_class_and_missing_detections(gt):
    m = coco_map(gt, [_result(1, 18, [10, 10, 40, 40])])  # person box called dog
    assert m["AP50"] == pytest.approx(0.0)
    half = coco_map(gt, [_result(1, 1, [10, 10, 40, 40])])  # dog missed
    assert half["AP50"] == pytest.approx(0.5)


def test_false_positive_on_a_background_image_ranked_first_costs_precision(gt):
    results = [
        _result(2, 1, [0, 0, 30, 30], score=0.99),
        _result(1, 1, [10, 10, 40, 40], score=0.5),
        _result(1, 18, [50, 50, 40, 40]),
    ]
    assert coco_map(gt, results)["AP50"] == pytest.approx(0.75, abs=0.01)
    # Leaving image 2 out of the evaluation drops its false positive.
    assert coco_map(gt, results, image_ids=[1])["AP50"] == pytest.approx(1.0)


def test_no_detections_scores_zero(gt):
    assert coco_map(gt, []) == dict.fromkeys(STAT_NAMES, 0.0)


def test_detections_to_coco_converts_boxes_and_categories():
    d = Detections(
        boxes=torch.tensor([[10.0, 20.0, 50.0, 80.0]]),
        scores=torch.tensor([0.75]),
        labels=torch.tensor([16]),
    )
    (r,) = detections_to_coco(7, d, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18])
    assert r == {"image_id": 7, "category_id": 18, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.75}
    with pytest.raises(ValueError, match="class index 16 has no category id"):
        detections_to_coco(7, d, [1, 2])
