import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolo_prune.data.cifar10 import CLASSES, cifar10_tensors, decode_tarball, load_cifar10
from yolo_prune.errors import DataError


def _tarball(path: Path, items: list[tuple[str, np.ndarray]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, img in items:
            ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
            assert ok
            data = buf.tobytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_decode_sorted_labelled_rgb_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_PRUNE_CACHE", str(tmp_path / "cache"))
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((32, 32, 3), np.uint8)
    blue[..., 2] = 255
    _tarball(
        tmp_path / "cifar10_jpg_test.tar.gz",
        [("test/truck/0001.jpg", blue), ("test/airplane/0000.jpg", red)],
    )
    x, y = load_cifar10(tmp_path, split="test")
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == [CLASSES.index("airplane"), CLASSES.index("truck")]
    assert x[0, 0].float().mean() > 240 and x[0, 2].float().mean() < 15  # RGB order
    assert len(list((tmp_path / "cache").glob("cifar10-test-*.npz"))) == 1
    x2, y2 = load_cifar10(tmp_path, split="test")  # from the cache
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xf, _ = cifar10_tensors(tmp_path, split="test")
    assert xf.dtype == torch.float32 and xf.min() >= 0.0 and xf.max() <= 1.0


def test_unknown_class_folder_is_an_error(tmp_path):
    _tarball(tmp_path / "t.tar.gz", [("test/unicorn/0.jpg", np.zeros((32, 32, 3), np.uint8))])
    with pytest.raises(DataError, match="folder 'unicorn' is not a CIFAR-10 class"):
        decode_tarball(tmp_path / "t.tar.gz")


def test_missing_tarball_is_an_error(tmp_path):
    with pytest.raises(DataError, match="cifar10_jpg_train.tar.gz: no such file"):
        load_cifar10(tmp_path, split="train", cache=False)


def test_real_cifar10_test_split(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_PRUNE_CACHE", str(tmp_path))
    x, y = load_cifar10(shared_data / "cifar10", split="test")
    assert x.shape == (10000, 3, 32, 32)
    assert y.bincount().tolist() == [1000] * 10
