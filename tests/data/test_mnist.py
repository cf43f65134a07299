import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_prune.data.mnist import is_mnist_dir, load_mnist, mnist_tensors, read_idx
from yolo_prune.errors import DataError


@pytest.fixture(scope="module")
def mnist_dir(shared_data: Path) -> Path:
    return shared_data / "mnist"


def test_real_mnist_shapes_and_published_label_counts(mnist_dir):
    MNIST = mnist_dir
    x, y = load_mnist(MNIST, split="test")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64
    # the t10k label histogram everyone knows
    assert y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    xt, yt = load_mnist(MNIST, split="train")
    assert xt.shape == (60000, 28, 28) and yt[:5].tolist() == [5, 0, 4, 1, 9]
    assert is_mnist_dir(MNIST)


def test_float_tensors_are_in_unit_range(mnist_dir):
    x, y = mnist_tensors(mnist_dir, split="test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0.0 and x.max() == 1.0


def _write_idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> None:
    header = magic or struct.pack(">HBB", 0, 0x08, array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + dims + array.astype(np.uint8).tobytes())


def test_small_idx_roundtrip_and_errors(tmp_path):
    imgs = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 7]))
    x, y = load_mnist(tmp_path, split="test")
    assert torch.equal(x, torch.from_numpy(imgs.astype(np.uint8)))
    assert y.tolist() == [3, 7]

    _write_idx(tmp_path / "bad.gz", imgs, magic=b"\x00\x00\x0d\x03")
    with pytest.raises(DataError, match="bad.gz: bad idx magic 00000d03"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(DataError, match="no such file"):
        load_mnist(tmp_path, split="train")
    with pytest.raises(DataError, match="unknown MNIST split 'val'"):
        load_mnist(tmp_path, split="val")


def test_truncated_file_is_an_error(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(DataError, match=r"header says \(10,\) = 10 values but the file holds 2"):
        read_idx(p)
