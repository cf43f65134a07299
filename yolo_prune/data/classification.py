"""Image-classification data in memory: which dataset a folder holds, its splits, and shuffled,
augmented training batches.

The classifier datasets (MNIST, CIFAR-10) fit in memory as float tensors, so training reads
them as tensors instead of through a DataLoader; :class:`ShuffledBatches` draws every random
number from one seeded CPU generator in a fixed order, so a seed gives the same batches on any
device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from yolo_prune.data.cifar10 import cifar10_tensors, is_cifar10_dir
from yolo_prune.data.mnist import is_mnist_dir, mnist_tensors
from yolo_prune.errors import ConfigError, DataError

Tensors = tuple[torch.Tensor, torch.Tensor]  # images float [N, C, H, W] in [0, 1], labels [N]

# name -> (loader(root, split=...) -> Tensors, whether the loader gives the images class-sorted)
DATASETS: dict[str, tuple[Callable[..., Tensors], bool]] = {
    "MNIST": (mnist_tensors, False),
    "CIFAR-10": (cifar10_tensors, True),  # tarball members in path order: sorted by class
}
SPLIT_SEED = 0  # the fixed shuffle of class-sorted data: the same val split for every seed


def classification_dataset(root: str | Path) -> str | None:
    """``"MNIST"``, ``"CIFAR-10"`` or ``None``, from the files in ``root``."""
    if is_mnist_dir(root):
        return "MNIST"
    if is_cifar10_dir(root):
        return "CIFAR-10"
    return None


def load_splits(
    root: str | Path, *, val_size: int, max_images: int | None = None
) -> dict[str, Tensors]:
    """``train``, ``val`` (the last ``val_size`` training images) and ``test`` of the dataset.

    Class-sorted data (CIFAR-10) is shuffled first with a fixed seed, or the held-out images
    would all be trucks. ``max_images`` keeps the first N images of each split (smoke runs).

    Raises:
        DataError: ``root`` holds no classification dataset.
        ConfigError: ``val_size`` leaves no training images.
    """
    name = classification_dataset(root)
    if name is None:
        raise DataError(
            "not a classification dataset: expected MNIST (t10k-images-idx3-ubyte.gz, ...) or "
            "CIFAR-10 (cifar10_jpg_train.tar.gz, cifar10_jpg_test.tar.gz)",
            path=Path(root),
        )
    load, class_sorted = DATASETS[name]
    x_all, y_all = load(root, split="train")
    x_test, y_test = load(root, split="test")
    if not 0 < val_size < len(x_all):
        raise ConfigError(f"train.val_size={val_size}: the training split has {len(x_all)} images")
    if class_sorted:
        gen = torch.Generator().manual_seed(SPLIT_SEED)
        perm = torch.randperm(len(x_all), generator=gen)
        x_all, y_all = x_all[perm], y_all[perm]
        perm = torch.randperm(len(x_test), generator=gen)
        x_test, y_test = x_test[perm], y_test[perm]
    splits = {
        "train": (x_all[:-val_size], y_all[:-val_size]),
        "val": (x_all[-val_size:], y_all[-val_size:]),
        "test": (x_test, y_test),
    }
    if max_images:
        splits = {k: (x[:max_images], y[:max_images]) for k, (x, y) in splits.items()}
    return splits


class ShuffledBatches:
    """Epochs of shuffled in-memory batches, augmented.

    Each image is translated by up to ``shift`` px in x and y, zero-filled (the same as padding
    by ``shift`` and cropping at random), then flipped left-right with probability 1/2 if
    ``flip``, then normalised per channel if ``mean``/``std`` are given. Random numbers come from
    a CPU generator seeded with ``seed`` in a fixed order (permutation, dy, dx, flips); without
    ``flip`` no flip numbers are drawn.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shift: int,
        seed: int,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shift, self.flip = batch_size, shift, flip
        self.gen = torch.Generator().manual_seed(seed)
        self.norm = None if mean is None else channel_stats(mean, std, images)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def _translate(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shift
        b, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (b,), generator=self.gen).to(x.device)
        dx = torch.randint(0, 2 * s + 1, (b,), generator=self.gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, chan, rows, cols]

    def _flip(self, x: torch.Tensor) -> torch.Tensor:
        flipped = torch.rand(len(x), generator=self.gen).to(x.device) < 0.5
        return torch.where(flipped[:, None, None, None], x.flip(-1), x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` normalised per channel as the training batches are (unchanged without it)."""
        return x if self.norm is None else (x - self.norm[0]) / self.norm[1]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (float [B, C, H, W]) translated, flipped and normalised as configured."""
        if self.shift:
            x = self._translate(x)
        if self.flip:
            x = self._flip(x)
        return self.normalise(x)

    def __iter__(self) -> Iterator[Tensors]:
        perm = torch.randperm(len(self.images), generator=self.gen).to(self.images.device)
        for i in range(0, len(perm), self.batch_size):
            idx = perm[i : i + self.batch_size]
            yield self.augment(self.images[idx]), self.labels[idx]


def channel_stats(
    mean: Sequence[float], std: Sequence[float] | None, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` as ``[1, C, 1, 1]`` tensors on ``images``' device, checked against it."""
    c = images.shape[1]
    if std is None or len(mean) != c or len(std) != c or min(std) <= 0:
        raise ConfigError(
            f"train.normalize: expected mean and std with {c} entries each (std > 0), "
            f"got mean={mean} std={std}"
        )
    shape = (1, c, 1, 1)
    kw = {"dtype": images.dtype, "device": images.device}
    return torch.tensor(list(mean), **kw).view(shape), torch.tensor(list(std), **kw).view(shape)
