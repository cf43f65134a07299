"""Top-k classification accuracy of any model that maps ``[B, C, H, W]`` to scores ``[B, K]``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Accuracy:
    """Counts behind an accuracy figure."""

    correct: int  # samples whose label is among the top-k scores
    total: int  # samples seen
    k: int = 1  # the k of top-k

    @property
    def value(self) -> float:
        """Fraction correct, in [0, 1]."""
        return self.correct / self.total if self.total else 0.0


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    k: int = 1,
    device: torch.device | str = "cpu",
) -> Accuracy:
    """Top-``k`` accuracy over ``(images [B, C, H, W], labels [B] int64)`` batches.

    The model runs in eval mode (restored afterwards); its outputs may be logits or
    probabilities, only their order matters.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for images, labels in batches:
            scores = model(images.to(device))
            labels = labels.to(device)
            top = scores.topk(k, dim=1).indices
            correct += int((top == labels.unsqueeze(1)).any(dim=1).sum())
            total += labels.numel()
    finally:
        model.train(was_training)
    return Accuracy(correct=correct, total=total, k=k)


def tensor_batches(
    images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 512
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(images, labels)`` slices of in-memory tensors (no copy, no shuffling)."""
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]
