"""CIFAR-10 from the JPEG tarballs (``cifar10_jpg_{train,test}.tar.gz``, one folder per class).

Decoding 60,000 JPEGs takes a while, so each split is decoded once and cached as an ``.npz``
under the cache folder (``$YOLO_PRUNE_CACHE``, else ``~/.cache/yolo_prune``), keyed by the
tarball's name, size and modification time; a changed tarball is decoded again. Writes are
atomic, so an interrupted decode leaves no half cache.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import cv2
import numpy as np
import torch

from yolo_prune.errors import DataError
from yolo_prune.utils.io import atomic_write_bytes

logger = logging.getLogger(__name__)

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
TARBALLS = {"train": "cifar10_jpg_train.tar.gz", "test": "cifar10_jpg_test.tar.gz"}


def is_cifar10_dir(root: str | Path) -> bool:
    """True if ``root`` holds the CIFAR-10 test tarball."""
    return (Path(root) / TARBALLS["test"]).is_file()


def cache_dir() -> Path:
    """Where decoded datasets are cached (``$YOLO_PRUNE_CACHE`` or ``~/.cache/yolo_prune``)."""
    env = os.environ.get("YOLO_PRUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "yolo_prune"


def decode_tarball(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 32, 32, 3] RGB, labels int64 [N])`` from a class-folder tarball.

    Members are taken in sorted path order, so the result does not depend on the tar layout.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("no such file; expected the CIFAR-10 JPEG tarball here", path=p)
    index = {c: i for i, c in enumerate(CLASSES)}
    items: list[tuple[str, int, bytes]] = []
    try:
        with tarfile.open(p, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith((".jpg", ".jpeg")):
                    continue
                parts = member.name.split("/")
                if len(parts) < 2 or parts[-2] not in index:
                    raise DataError(
                        f"{member.name}: folder {parts[-2] if len(parts) > 1 else ''!r} is not a "
                        f"CIFAR-10 class ({', '.join(CLASSES)})",
                        path=p,
                    )
                f = tar.extractfile(member)
                items.append((member.name, index[parts[-2]], f.read() if f else b""))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read tarball ({exc})", path=p) from None
    if not items:
        raise DataError("no JPEG images inside", path=p)
    items.sort(key=lambda it: it[0])
    images = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
    labels = np.empty(len(items), dtype=np.int64)
    for i, (name, label, data) in enumerate(items):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None or img.shape != (32, 32, 3):
            got = None if img is None else img.shape
            raise DataError(f"{name}: not a 32x32 colour JPEG (decoded {got})", path=p)
        images[i] = img[:, :, ::-1]
        labels[i] = label
    return images, labels


def load_cifar10(
    root: str | Path, *, split: str = "train", cache: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 3, 32, 32] RGB, labels int64 [N])`` of ``split`` (train or test)."""
    if split not in TARBALLS:
        raise DataError(f"unknown CIFAR-10 split {split!r}; choose train or test")
    tar = Path(root) / TARBALLS[split]
    if not tar.is_file():
        raise DataError("no such file; expected the CIFAR-10 JPEG tarball here", path=tar)
    st = tar.stat()
    cached = cache_dir() / f"cifar10-{split}-{st.st_size}-{st.st_mtime_ns}.npz"
    images = labels = None
    if cache and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                images, labels = z["images"], z["labels"]
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("ignoring unreadable cache %s (%s)", cached, exc)
    if images is None:
        logger.info("decoding %s (once; cached in %s)", tar, cached.parent)
        images, labels = decode_tarball(tar)
        if cache:
            buf = io.BytesIO()
            np.savez(buf, images=images, labels=labels)
            try:
                atomic_write_bytes(cached, buf.getvalue())
            except OSError as exc:
                logger.warning("cannot write cache %s (%s)", cached, exc)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(labels.astype(np.int64))


def cifar10_tensors(
    root: str | Path, *, split: str = "train", cache: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 [N, 3, 32, 32] RGB in [0, 1], labels int64 [N])``.

    Pixels are not mean/std normalised: Darknet feeds [0, 1] and a batch-normalised first
    layer does the rest, so a model needs nothing but its cfg to be evaluated.
    """
    images, labels = load_cifar10(root, split=split, cache=cache)
    return images.float().div_(255.0), labels
