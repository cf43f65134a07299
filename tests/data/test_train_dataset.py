"""The training dataset: boxes in input pixels, bad labels refused as evaluation refuses them,
unreadable images survived."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

from yolo_prune.data.train_dataset import TrainDataset, collate_detection
from yolo_prune.data.yolo_txt import load_yolo_txt
from yolo_prune.errors import DataError


def _write_dataset(root, labels: dict[str, str], *, corrupt: tuple[str, ...] = ()):
    """images/train/<stem>.jpg (100x50 random) and labels/train/<stem>.txt with given text."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, text in labels.items():
        path = root / "images" / "train" / f"{stem}.jpg"
        if stem in corrupt:
            path.write_bytes(b"not a jpeg")
        else:
            cv2.imwrite(str(path), rng.integers(0, 255, (50, 100, 3), dtype=np.uint8))
        if text is not None:
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    return root


def test_labels_become_input_pixels(tmp_path):
    root = _write_dataset(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n0 0.25 0.75 0.1 0.2\n"})
    ds = TrainDataset(root, size=(64, 128), num_classes=2)
    x, labels = ds[0]
    assert x.shape == (3, 64, 128) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    expected = torch.tensor([[1, 64, 32, 25.6, 25.6], [0, 32, 48, 12.8, 12.8]])
    torch.testing.assert_close(labels, expected, atol=1e-3, rtol=0)


def test_collate_keeps_boxes_per_image(tmp_path):
    root = _write_dataset(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n", "b": "", "c": "0 0.5 0.5 1 1\n"})
    ds = TrainDataset(root, size=64, num_classes=2)
    images, targets = collate_detection([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 64, 64)
    assert targets.shape == (2, 6)
    assert targets[:, 0].tolist() == [0.0, 2.0]
    torch.testing.assert_close(targets[1, 2:], torch.tensor([32.0, 32.0, 64.0, 64.0]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n", "^bad.txt:2: expected 5 fields 'class cx cy w h'"),
        ("zero 0.5 0.5 0.2 0.2\n", "^bad.txt:1: class 'zero' is not an integer class index"),
        ("0 0.5 0.5 0.2 0.2\n\n5 0.5 0.5 0.2 0.2\n", r"^bad.txt:3: .*expected \[0, 2\)"),
        ("1 1.5 0.5 0.2 0.2\n", r"^bad.txt:1: box 1.5 0.5 0.2 0.2 is outside \[0, 1\]"),
        ("1 0.5 0.5 0.2 inf\n", "^bad.txt:1: .*not a finite number"),
        ("1 0.5 0.5 0 0.2\n", "^bad.txt:1: box has a zero width or height"),
    ],
)
def test_a_bad_label_line_is_an_error_naming_file_and_line(tmp_path, text, message):
    root = _write_dataset(tmp_path, {"good": "0 0.5 0.5 0.2 0.2\n", "bad": text})
    with pytest.raises(DataError, match=message):
        TrainDataset(root, size=64, num_classes=2)


def test_training_and_evaluation_refuse_a_bad_label_file_with_the_same_error(tmp_path):
    root = _write_dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 -0.2 0.2\n"})
    with pytest.raises(DataError) as train:
        TrainDataset(root, split="train", size=64, num_classes=2)
    with pytest.raises(DataError) as evaluation:
        load_yolo_txt(root, split="train", category_ids=[1, 2])
    assert str(train.value) == str(evaluation.value)
    assert str(train.value).startswith("a.txt:2: box has a negative width or height")


def test_boxes_reaching_outside_the_image_are_clipped(tmp_path, caplog):
    root = _write_dataset(tmp_path, {"x": "0 0.9 0.5 0.4 0.2\n1 0.0 0.5 0.2 0.2\n"})
    with caplog.at_level(logging.WARNING):
        ds = TrainDataset(root, size=64, num_classes=2)
    (record,) = ds.records
    assert record.classes.tolist() == [0, 1]
    np.testing.assert_allclose(
        record.boxes, [[0.7, 0.4, 1.0, 0.6], [0.0, 0.4, 0.1, 0.6]], atol=1e-6
    )
    assert "x.txt: box 0 0.9 0.5 0.4 0.2 reaches outside the image; clipped" in caplog.text
    assert "x.txt: box 1 0 0.5 0.2 0.2 reaches outside the image; clipped" in caplog.text


def test_empty_and_missing_label_files_are_background_images(tmp_path, caplog):
    root = _write_dataset(tmp_path, {"a": "\n\n", "b": "", "c": None})
    with caplog.at_level(logging.WARNING):
        ds = TrainDataset(root, size=64, num_classes=2)
    assert [r.path.stem for r in ds.records] == ["a", "b", "c"]
    assert all(ds[i][1].shape == (0, 5) for i in range(3))
    assert caplog.text == ""  # no objects is a normal image, not a problem


def test_unreadable_image_is_replaced_by_the_next(tmp_path, caplog):
    root = _write_dataset(
        tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"}, corrupt=("a",)
    )
    ds = TrainDataset(root, size=64, num_classes=2)
    with caplog.at_level(logging.WARNING):
        _, labels = ds[0]
    assert labels[:, 0].tolist() == [1.0]  # b's label
    assert "a.jpg" in caplog.text and "next image" in caplog.text


def test_no_usable_image_is_an_error(tmp_path):
    root = _write_dataset(tmp_path, {})
    (root / "images" / "train" / "notes.md").write_text("not an image")
    with pytest.raises(DataError, match="no usable training image"):
        TrainDataset(root, size=64, num_classes=2)


def test_coco_json_layout_and_epoch_seeding(shared_data):
    from yolo_prune.data.augment import AugmentConfig

    ds = TrainDataset(
        shared_data / "coco128", size=96, num_classes=80, augment=AugmentConfig(), max_images=4
    )
    assert ds.split == "train2017" and len(ds) == 4
    x0, l0 = ds[1]
    x1, l1 = ds[1]
    torch.testing.assert_close(x0, x1)
    torch.testing.assert_close(l0, l1)
    assert ((l0[:, 0] >= 0) & (l0[:, 0] < 80)).all()
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], x0)


def test_mosaic_tiles_four_images_and_reproduces(tmp_path):
    from yolo_prune.data.augment import AugmentConfig

    labels = {f"im{k}": f"{k} 0.5 0.5 0.5 0.5\n" for k in range(4)}
    root = _write_dataset(tmp_path, labels)
    aug = AugmentConfig(mosaic=1.0, hsv_p=0.0, flip=0.0, affine_p=0.0)
    ds = TrainDataset(root, size=64, num_classes=4, augment=aug)
    for index in range(4):
        x, lab = ds[index]
        assert x.shape == (3, 64, 64)
        assert index in lab[:, 0].tolist()  # the image asked for is always in its mosaic
        xyxy = torch.cat((lab[:, 1:3] - lab[:, 3:5] / 2, lab[:, 1:3] + lab[:, 3:5] / 2), 1)
        assert bool((xyxy >= -1e-4).all() and (xyxy <= 64 + 1e-4).all())
        assert bool((lab[:, 3:5] > 0).all())
        torch.testing.assert_close(ds[index][1], lab)
    assert max(len(ds[i][1]) for i in range(4)) > 1
