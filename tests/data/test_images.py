"""Image reading: clear errors, grey and alpha images, folder listing, skipping bad files."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from yolo_prune.data.images import image_size, iter_images, list_images, load_image
from yolo_prune.errors import DataError

cv2 = pytest.importorskip("cv2")


def test_reads_bgr_and_expands_grey_and_drops_alpha(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    rgba = np.zeros((5, 7, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    g = load_image(tmp_path / "grey.png")
    assert g.shape == (12, 10, 3) and g.dtype == np.uint8
    assert np.array_equal(g[..., 0], grey) and np.array_equal(g[..., 2], grey)
    a = load_image(tmp_path / "alpha.png")
    assert a.shape == (5, 7, 3) and np.all(a[..., 0] == 200)
    assert image_size(tmp_path / "alpha.png") == (7, 5)


def test_real_image_size(shared_data):
    assert image_size(shared_data / "images" / "dog.jpg") == (768, 576)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such image file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("not a picture"), "OpenCV cannot decode it"),
    ],
    ids=["missing", "folder", "empty", "text"],
)
def test_errors_name_the_file(tmp_path, make, message):
    path = tmp_path / "photo.jpg"
    make(path)
    with pytest.raises(DataError, match=f"^photo.jpg: .*{message}"):
        load_image(path)


def test_list_images_sorted_filtered_not_hidden(tmp_path):
    for name in ("b.jpg", "a.PNG", ".hidden.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg"]
    assert [p.name for p in list_images(tmp_path, all_files=True)] == [
        "a.PNG",
        "b.jpg",
        "notes.txt",
    ]
    with pytest.raises(DataError, match="no such folder"):
        list_images(tmp_path / "nope")
    with pytest.raises(DataError, match="expected a folder"):
        list_images(tmp_path / "b.jpg")


def test_iter_images_skips_bad_files_with_a_warning_naming_each(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    (tmp_path / "readme.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        got = [p.name for p, _ in iter_images(list_images(tmp_path, all_files=True))]
    assert got == ["good.png"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "bad.jpg" in warned and "readme.txt" in warned
