"""Image-classification data in memory: which dataset a folder holds, its splits, and shuffled,
augmented training batches.

The classifier datasets (MNIST, CIFAR-10) fit in memory as float tensors, so training reads
them as tensors instead of through a DataLoader; :class:`ShuffledBatches` draws every random
number from one seeded CPU generator in a fixed order, so a seed gives the same batches on any
device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
    """Epochs of shuffled in-memory batches, augmented, each shared among the processes.

    Each image is translated by up to ``shift`` px in x and y, zero-filled (the same as padding
    by ``shift`` and cropping at random), then flipped left-right with probability 1/2 if
    ``flip``, then normalised per channel if ``mean``/``std`` are given. Random numbers come from
    a CPU generator seeded with ``seed`` in a fixed order (permutation, dy, dx, flips); without
    ``flip`` no flip numbers are drawn.

    Under data parallel training (:meth:`shard`) every process draws the same numbers for the
    whole global batch of ``batch_size`` images and keeps only its part (the ranks' parts differ
    by one image at most; ``share`` is this rank's fraction of the batch it was given last), so N
    processes train on the batches one process draws, but for a last batch of an epoch with
    fewer images than processes, which they leave out. The epoch's position can be saved and
    restored (:meth:`state_dict`, :meth:`load_state_dict`, :meth:`set_epoch`): a resumed run
    continues with the batches and augmentations that an uninterrupted run would draw.
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
        self.rank, self.world_size = 0, 1
        self.share = 1.0  # this process's fraction of the batch it was given last
        self._start = self.gen.get_state()  # the generator before this epoch's permutation
        self._perm: torch.Tensor | None = None  # this epoch's permutation, once drawn
        self._taken = 0  # batches given out of this epoch
        self._restored = False  # load_state_dict() left an epoch to be continued

    def shard(self, *, rank: int, world_size: int) -> None:
        """Give this process (``rank`` of ``world_size``) its part of every batch from now on."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world_size {world_size}; expected 0 <= rank < size")
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        """Batches in an epoch (global batches: each process gets its part of every one)."""
        n = len(self.images)
        if 0 < n % self.batch_size < self.world_size:  # a last batch some process has no part of
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def _draw(self, b: int) -> tuple[torch.Tensor | None, ...]:
        """``(dy, dx, flipped)`` for a batch of ``b`` images ``[b]`` each (None: not drawn)."""
        dy = dx = flipped = None
        if self.shift:
            dy = torch.randint(0, 2 * self.shift + 1, (b,), generator=self.gen)
            dx = torch.randint(0, 2 * self.shift + 1, (b,), generator=self.gen)
        if self.flip:
            flipped = torch.rand(b, generator=self.gen) < 0.5
        return dy, dx, flipped

    def _apply(
        self,
        x: torch.Tensor,
        dy: torch.Tensor | None,
        dx: torch.Tensor | None,
        flipped: torch.Tensor | None,
    ) -> torch.Tensor:
        """``x`` [b, C, H, W] augmented with the numbers :meth:`_draw` gave for it, normalised."""
        if dy is not None and dx is not None:
            x = self._translate(x, dy.to(x.device), dx.to(x.device))
        if flipped is not None:
            x = torch.where(flipped.to(x.device)[:, None, None, None], x.flip(-1), x)
        return self.normalise(x)

    def _translate(self, x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        s = self.shift
        b, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, chan, rows, cols]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` normalised per channel as the training batches are (unchanged without it)."""
        return x if self.norm is None else (x - self.norm[0]) / self.norm[1]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (float [B, C, H, W]) translated, flipped and normalised as configured."""
        return self._apply(x, *self._draw(len(x)))

    def state_dict(self) -> dict[str, Any]:
        """The position in the epoch: the generator's state before the epoch's permutation, the
        batches given out since and the batch size (tensors and plain values only)."""
        return {"generator": self._start.clone(), "taken": self._taken,
                "batch_size": self.batch_size}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go back to where :meth:`state_dict` was taken: the epoch's permutation is drawn again
        and the random numbers of its batches given out so far, so the generator is where it
        was; :meth:`set_epoch` then continues that epoch or starts the next one.

        Raises:
            ValueError: the state was taken with another batch size.
        """
        if int(state["batch_size"]) != self.batch_size:
            raise ValueError(f"the saved position is in batches of {state['batch_size']}, "
                             f"these are batches of {self.batch_size}")  # fmt: skip
        self.gen.set_state(state["generator"])
        self._start = self.gen.get_state()
        self._perm = torch.randperm(len(self.images), generator=self.gen)
        self._taken = int(state["taken"])
        for i in range(self._taken):
            self._draw(len(self._perm[i * self.batch_size : (i + 1) * self.batch_size]))
        self._restored = True

    def set_epoch(self, *, skip_steps: int = 0) -> None:
        """Make the next iteration a new epoch (``skip_steps`` 0) or the rest of the epoch that
        :meth:`load_state_dict` restored, after its first ``skip_steps`` batches.

        Raises:
            ValueError: ``skip_steps`` is not the restored epoch's position.
        """
        if skip_steps and not (self._restored and skip_steps == self._taken):
            where = f"{self._taken} batches" if self._restored else "no restored epoch"
            raise ValueError(f"skip_steps={skip_steps}, but the position holds {where}")
        self._restored = bool(skip_steps)

    def __iter__(self) -> Iterator[Tensors]:
        if self._restored:
            self._restored = False
        else:
            self._start = self.gen.get_state()
            self._perm = torch.randperm(len(self.images), generator=self.gen)
            self._taken = 0
        perm = self._perm.to(self.images.device)
        for i in range(self._taken * self.batch_size, len(perm), self.batch_size):
            if self._taken >= len(self):
                return
            idx = perm[i : i + self.batch_size]
            draws = self._draw(len(idx))
            self._taken += 1
            part = torch.arange(len(idx)).tensor_split(self.world_size)[self.rank]
            self.share = len(part) / len(idx)
            mine = idx[part.to(idx.device)]
            mine_draws = (d if d is None else d[part] for d in draws)
            yield self._apply(self.images[mine], *mine_draws), self.labels[mine]


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
