"""MNIST from its original idx files (``train-images-idx3-ubyte.gz`` and friends).

``load_mnist(root, split)`` gives ``(images uint8 [N, 28, 28], labels int64 [N])``; decoding the
gzip'd idx files takes a fraction of a second, so nothing is cached. :func:`mnist_tensors` gives
the float tensors a classifier trains on: pixels in [0, 1], as Darknet feeds its networks (no
mean/std normalisation, so a model needs nothing but the cfg to be evaluated).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from yolo_prune.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_DTYPE = {0x08: np.uint8}


def is_mnist_dir(root: str | Path) -> bool:
    """True if ``root`` holds the MNIST test files."""
    return all((Path(root) / f).is_file() for f in FILES["test"])


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (optionally gzip'd) as a numpy array of its stated shape."""
    p = Path(path)
    if not p.is_file():
        raise DataError("no such file; expected the original MNIST idx files here", path=p)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read ({exc})", path=p) from None
    if len(data) < 4:
        raise DataError(f"{len(data)} bytes; too short for an idx header", path=p)
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPE:
        raise DataError(
            f"bad idx magic {data[:4].hex()}; expected 0000 08 0n (unsigned bytes)", path=p
        )
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=_IDX_DTYPE[dtype_code], offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(
            f"header says {dims} = {int(np.prod(dims))} values but the file holds {body.size}",
            path=p,
        )
    return body.reshape(dims)


def load_mnist(root: str | Path, *, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of ``split`` (``train`` or ``test``)."""
    if split not in FILES:
        raise DataError(f"unknown MNIST split {split!r}; choose train or test")
    img_name, lbl_name = FILES[split]
    root = Path(root)
    images = read_idx(root / img_name)
    labels = read_idx(root / lbl_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"images {images.shape} and labels {labels.shape} do not pair up",
            path=root / img_name,
        )
    if labels.max(initial=0) > 9:
        raise DataError(f"label {labels.max()} outside 0..9", path=root / lbl_name)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def mnist_tensors(root: str | Path, *, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 [N, 1, 28, 28] in [0, 1], labels int64 [N])``."""
    images, labels = load_mnist(root, split=split)
    return images.unsqueeze(1).float().div_(255.0), labels
