"""YOLO txt labels -> COCO ground truth: pixel boxes, category ids, background, bad lines."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from yolo_prune.data.coco import COCO80_TO_91, load_coco_json
from yolo_prune.data.yolo_txt import load_yolo_txt, parse_label_file, yolo_txt_to_coco
from yolo_prune.errors import DataError

cv2 = pytest.importorskip("cv2")


def _dataset(root: Path, labels: dict[str, str], sizes: dict[str, tuple[int, int]]) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for name, (w, h) in sizes.items():
        cv2.imwrite(str(root / "images" / "val" / name), np.zeros((h, w, 3), np.uint8))
    for stem, text in labels.items():
        (root / "labels" / "val" / f"{stem}.txt").write_text(text)
    return root


def test_boxes_become_coco_pixels_with_coco_category_ids(tmp_path):
    root = _dataset(
        tmp_path,
        {"a": "0 0.5 0.5 0.2 0.4\n\n79 0.25 0.75 0.5 0.5\n", "b": ""},
        {"a.png": (100, 50), "b.png": (40, 80), "c.png": (10, 10)},
    )
    ds = load_yolo_txt(root, split="val")
    assert [r.path.name for r in ds] == ["a.png", "b.png", "c.png"]
    assert [(r.width, r.height) for r in ds] == [(100, 50), (40, 80), (10, 10)]
    anns = ds.gt.dataset["annotations"]
    assert [a["category_id"] for a in anns] == [1, 90]  # person, toothbrush
    np.testing.assert_allclose(anns[0]["bbox"], [40.0, 15.0, 20.0, 20.0])
    np.testing.assert_allclose(anns[1]["bbox"], [0.0, 25.0, 50.0, 25.0])
    assert all(a["image_id"] == ds[0].image_id and a["iscrowd"] == 0 for a in anns)
    # b (empty file) and c (no file) are background images: present, with no objects.
    assert ds.gt.getAnnIds(imgIds=[ds[1].image_id, ds[2].image_id]) == []
    assert ds.category_ids == list(COCO80_TO_91) and ds.num_annotations == 2


def test_custom_category_ids_and_numbered_image_ids(tmp_path):
    root = _dataset(tmp_path, {"x": "1 0.5 0.5 0.5 0.5\n"}, {"x.png": (8, 8), "y.png": (8, 8)})
    coco, records = yolo_txt_to_coco(
        root / "images" / "val", root / "labels" / "val", category_ids=[10, 20], names=["a", "b"]
    )
    assert [r.image_id for r in records] == [1, 2]
    assert coco["annotations"][0]["category_id"] == 20
    assert [c["name"] for c in coco["categories"]] == ["a", "b"]
    with pytest.raises(DataError, match=r"class 2 is out of range; expected \[0, 2\)"):
        bad = _dataset(tmp_path / "bad", {"x": "2 0.5 0.5 0.5 0.5\n"}, {"x.png": (8, 8)})
        yolo_txt_to_coco(bad / "images" / "val", bad / "labels" / "val", category_ids=[10, 20])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "expected 5 fields 'class cx cy w h', found 4"),
        ("dog 0.5 0.5 0.2 0.2", "class 'dog' is not an integer"),
        ("0.0 0.5 0.5 0.2 0.2", "class '0.0' is not an integer"),
        ("-1 0.5 0.5 0.2 0.2", "class -1 is out of range"),
        ("80 0.5 0.5 0.2 0.2", r"class 80 is out of range; expected \[0, 80\)"),
        ("0 0.5 x 0.2 0.2", "is not four numbers"),
        ("0 120 80 30 40", r"outside \[0, 1\]; YOLO labels are normalised"),
        ("0 0.5 0.5 nan 0.2", "not a finite number"),
        ("0 0.5 0.5 0 0.2", "zero width or height"),
    ],
)
def test_a_corrupt_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "000123.txt"
    path.write_text(f"1 0.5 0.5 0.1 0.1\n\n{line}\n")
    with pytest.raises(DataError, match=f"^000123.txt:3: .*{message}") as info:
        parse_label_file(path, num_classes=80)
    assert info.value.line == 3 and info.value.path == path


def test_a_corrupt_line_stops_loading_the_dataset(tmp_path):
    root = _dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n5 0.5\n"}, {"a.png": (8, 8)})
    with pytest.raises(DataError, match="^a.txt:2: expected 5 fields"):
        load_yolo_txt(root, split="val")


def test_unreadable_images_and_orphan_labels_are_warned_about(tmp_path, caplog):
    root = _dataset(tmp_path, {"a": "", "ghost": "0 0.5 0.5 0.1 0.1\n"}, {"a.png": (8, 8)})
    (root / "images" / "val" / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        ds = load_yolo_txt(root, split="val")
    assert [r.path.name for r in ds] == ["a.png"]
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "broken.jpg" in text and "ghost.txt" in text


def test_missing_images_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"no images/val folder"):
        load_yolo_txt(tmp_path, split="val")


def test_coco128_labels_equal_the_coco_json(shared_data, caplog):
    """coco128's train split has both layouts: the txt labels must give the JSON's boxes."""
    root = shared_data / "coco128"
    with caplog.at_level(logging.ERROR):
        txt = load_yolo_txt(root, split="train2017")
    ann = root / "annotations" / "instances_train2017.json"
    js = load_coco_json(root / "images" / "train2017", ann)
    assert [r.image_id for r in txt] == sorted(r.image_id for r in js)
    assert [(r.width, r.height) for r in txt] == [
        (r.width, r.height) for r in sorted(js, key=lambda r: r.image_id)
    ]
    matched = 0
    for r in txt:
        ours = txt.gt.imgToAnns[r.image_id]
        theirs = [a for a in js.gt.imgToAnns[r.image_id] if not a["iscrowd"]]
        assert len(ours) == len(theirs)
        for a in ours:
            err = min(
                max(abs(p - q) for p, q in zip(a["bbox"], b["bbox"], strict=True))
                for b in theirs
                if b["category_id"] == a["category_id"]
            )
            assert err < 0.01  # pixels
            matched += 1
    assert matched == 929  # 939 annotations, 10 of them crowds (not in YOLO labels)


def test_coco128_val_split(shared_data):
    root = shared_data / "coco128"
    ds = load_yolo_txt(root, split="val2017")
    lines = sum(
        len([x for x in p.read_text().splitlines() if x.strip()])
        for p in (root / "labels" / "val2017").glob("*.txt")
    )
    assert len(ds) == 64 and ds.num_annotations == lines
