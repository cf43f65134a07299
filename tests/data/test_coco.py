"""COCO JSON datasets, layout detection and split choice."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from yolo_prune.data.coco import (
    COCO80_TO_91,
    COCO_NAMES,
    choose_split,
    class_to_category,
    is_detection_dir,
    load_coco_json,
    load_detection_dataset,
)
from yolo_prune.errors import DataError

cv2 = pytest.importorskip("cv2")


def test_constants_agree_with_the_coco128_json(shared_data):
    cats = json.loads(
        (shared_data / "coco128" / "annotations" / "instances_train2017.json").read_text()
    )["categories"]
    assert [c["id"] for c in cats] == list(COCO80_TO_91)
    assert [c["name"] for c in cats] == list(COCO_NAMES)


def test_coco128_train_json(shared_data):
    root = shared_data / "coco128"
    ann = root / "annotations" / "instances_train2017.json"
    ds = load_coco_json(root / "images" / "train2017", ann)
    assert len(ds) == 128 and ds.num_annotations == 939
    assert ds.category_ids == list(COCO80_TO_91)
    first = ds[0]
    assert first.path.is_file() and (first.width, first.height) == (640, 480)


def test_class_to_category():
    assert class_to_category([{"id": 3}, {"id": 1}]) == list(COCO80_TO_91)  # a COCO subset
    assert class_to_category([{"id": 7}, {"id": 200}, {"id": 5}]) == [5, 7, 200]


def test_load_detection_dataset_picks_the_layout_and_split(shared_data):
    root = shared_data / "coco128"
    assert is_detection_dir(root) and not is_detection_dir(shared_data / "images")
    assert choose_split(root) == "val2017"
    val = load_detection_dataset(root)
    assert len(val) == 64 and val.name.startswith("YOLO txt")
    train = load_detection_dataset(root, split="train2017")
    assert len(train) == 128 and train.name.startswith("COCO JSON")  # JSON preferred


def test_missing_or_wrong_dataset_paths_are_one_clear_error(shared_data, tmp_path):
    with pytest.raises(DataError, match="^nowhere: no such dataset folder"):
        load_detection_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match="is a file"):
        load_detection_dataset(shared_data / "images" / "dog.jpg")
    with pytest.raises(DataError, match="no dataset split found"):
        load_detection_dataset(tmp_path)
    with pytest.raises(DataError, match="no split 'test'; this dataset has: train2017, val2017"):
        load_detection_dataset(shared_data / "coco128", split="test")


def _mini_coco(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((20, 30, 3), np.uint8))
    data = {
        "images": [
            {"id": 5, "file_name": "a.png", "width": 30, "height": 20},
            {"id": 6, "file_name": "gone.png", "width": 30, "height": 20},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 5,
                "category_id": 18,
                "bbox": [1, 2, 3, 4],
                "area": 12,
                "iscrowd": 0,
            },
        ],  # fmt: skip
        "categories": [{"id": 18, "name": "dog"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_images_missing_from_the_folder_are_left_out_with_a_warning(tmp_path, caplog):
    ann = _mini_coco(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = load_coco_json(tmp_path / "images", ann)
    assert [r.image_id for r in ds] == [5]
    assert "gone.png" in caplog.text
    assert ds.category_ids == list(COCO80_TO_91)  # dog is a COCO category


def test_bad_json_files(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="^bad.json: not valid JSON"):
        load_coco_json(tmp_path / "images", bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="no annotations, categories key"):
        load_coco_json(tmp_path / "images", bad)
    with pytest.raises(DataError, match="no such annotation file"):
        load_coco_json(tmp_path / "images", tmp_path / "missing.json")


def test_official_layout_with_split_folder(tmp_path):
    ann = _mini_coco(tmp_path / "src")
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    shutil.copytree(tmp_path / "src" / "images", tmp_path / "coco" / "val2017")
    shutil.copy(ann, tmp_path / "coco" / "annotations" / "instances_val2017.json")
    ds = load_detection_dataset(tmp_path / "coco")
    assert len(ds) == 1 and ds.name == "COCO JSON instances_val2017.json"
