"""Training images put to work without training: channel importance and refit batches.

Channel pruning without fine-tuning needs two things from data, both computed here for a
detector on a training dataset folder (no augmentation; resized or letterboxed as training
does it):

* :func:`fisher_importance`: the callback the pruning engine calls for the ``fisher``
  criterion (:func:`yolo_prune.prune.importance.fisher_channel_scores` on detection batches
  with :class:`~yolo_prune.detect.loss.YoloLoss` against the true boxes);
* :func:`calibration_images`: a batch for the least-squares refit of a shrunk network
  (:func:`yolo_prune.darknet.reconstruct.reconstruct_`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from yolo_prune.data.train_dataset import TrainDataset, collate_detection
from yolo_prune.detect.loss import YoloLoss
from yolo_prune.detect.preprocess import model_letterbox
from yolo_prune.prune.importance import ImportanceFn, fisher_channel_scores

logger = logging.getLogger(__name__)


def _dataset(
    model: nn.Module, data: str | Path, split: str | None, letterbox: bool | None, images: int
) -> TrainDataset:
    _, height, width = model.input_shape
    return TrainDataset(
        data,
        split=split,
        size=(height, width),
        num_classes=YoloLoss.from_model(model).heads[0].classes,
        augment=None,
        letterbox=model_letterbox(model, letterbox),
        max_images=images,
    )


def fisher_importance(
    data: str | Path,
    *,
    split: str | None = None,
    letterbox: bool | None = None,
    images: int = 128,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = False,
) -> ImportanceFn:
    """``importance(model, names)``: Fisher channel importance on the first ``images`` training
    images of ``data`` (the dataset is opened when the engine asks, not before)."""

    def importance(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
        dataset = _dataset(model, data, split, letterbox, images)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
        yolo_loss = YoloLoss.from_model(model)

        def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, targets = batch
            x = x.to(device)
            return yolo_loss(net(x), targets, (x.shape[-2], x.shape[-1]))[0]

        batches = loader
        if progress:
            from tqdm import tqdm

            batches = tqdm(loader, desc="channel importance", unit="batch", leave=False)
        return fisher_channel_scores(model, names, batches, loss)

    return importance


def calibration_images(
    model: nn.Module,
    data: str | Path,
    *,
    images: int = 32,
    split: str | None = None,
    letterbox: bool | None = None,
) -> torch.Tensor:
    """The first ``images`` training images of ``data`` as one ``[B, 3, H, W]`` batch in
    ``model``'s input geometry, RGB in [0, 1]."""
    dataset = _dataset(model, data, split, letterbox, images)
    return torch.stack([dataset[i][0] for i in range(len(dataset))]).contiguous()
