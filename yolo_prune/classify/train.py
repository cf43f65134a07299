"""Training a classifier for a number of epochs with the caller's hooks.

The classification counterpart of :func:`yolo_prune.detect.train.train_detector`: the prune job
calls it once per phase (the dense run, ADMM, the masked retraining) with the pruner's hooks;
it builds the optimizer and the schedule and knows nothing of pruning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from yolo_prune.data.classification import ShuffledBatches
from yolo_prune.engine.hooks import Hook, LossLogHook
from yolo_prune.engine.loop import LossFn, Trainer, cross_entropy_loss
from yolo_prune.engine.schedule import LRScheduleHook, WarmupCosine
from yolo_prune.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class ClassifyTrainConfig:
    """How one phase trains a classifier (a recipe's ``train``, then its ``phases`` entry)."""

    batch_size: int = 128  # images per optimizer step
    optimizer: str = "adam"  # adam or sgd
    lr: float = 1e-3  # base learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 0.0  # L2 on every parameter
    schedule: str = "cosine"  # cosine (to 1% of lr over the phase) or constant
    shift: int = 0  # random translation of each training image, pixels (zero-filled)
    flip: bool = False  # random horizontal flip
    normalize: dict | None = None  # {mean: [...], std: [...]} per channel (None: [0, 1] pixels)
    val_size: int = 5000  # last training images held out for accuracy-driven decisions
    seed: int = 0  # shuffling and augmentation seed
    max_images: int | None = None  # train, val and test on the first N images (smoke runs)
    steps_per_epoch: int | None = None  # cut epochs short (smoke runs; figures meaningless)
    amp: bool = False  # mixed precision (float16 + grad scaler on CUDA, bfloat16 on CPU)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size={self.batch_size}; expected a positive integer")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"train.optimizer={self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"train.schedule={self.schedule!r}; choose one of: {', '.join(SCHEDULES)}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"train.lr={self.lr}; expected a positive number")
        if self.shift < 0 or self.val_size < 1:
            raise ConfigError("train.shift must be >= 0 and train.val_size >= 1")
        if self.normalize is not None and set(self.normalize) != {"mean", "std"}:
            raise ConfigError(
                f"train.normalize={self.normalize}; expected {{mean: [...], std: [...]}}"
            )
        for name in ("max_images", "steps_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"train.{name}={value}; expected a positive integer")


def build_optimizer(model: nn.Module, config: ClassifyTrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over every parameter of ``model``, as ``config`` says."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )


TEMPERATURE = 4.0  # softening of both models' logits in the distillation term


def distilled_cross_entropy(teacher: nn.Module, weight: float, labels: float = 1.0) -> LossFn:
    """``labels`` times the cross-entropy on the labels plus ``weight`` times the teacher's
    soft targets (``labels`` 0: the teacher alone).

    The soft term is Hinton et al. (2015)'s: KL divergence from the teacher's to the student's
    class distribution, both at temperature :data:`TEMPERATURE`, scaled by its square so its
    gradients keep the size of the label term's. The teacher is frozen and runs in eval mode.
    """
    teacher.eval().requires_grad_(False)

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        logits = model(inputs)
        with torch.no_grad():
            taught = teacher(inputs).float()
        soft = F.kl_div(F.log_softmax(logits.float() / TEMPERATURE, dim=1),
                        F.log_softmax(taught / TEMPERATURE, dim=1),
                        reduction="batchmean", log_target=True)  # fmt: skip
        hard = F.cross_entropy(logits, targets) if labels else logits.new_zeros(())
        return labels * hard + weight * TEMPERATURE**2 * soft

    return loss


def train_classifier(
    model: nn.Module,
    batches: ShuffledBatches,
    config: ClassifyTrainConfig,
    *,
    epochs: int,
    hooks: Sequence[Hook] = (),
    device: torch.device | str = "cpu",
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    labels: float = 1.0,
) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` epochs of ``batches``; the last epoch's figures.

    ``batches`` is re-augmented with ``config.shift``/``config.flip`` (a phase may set its own).
    The caller's ``hooks`` run first (a pruning mask must see each step before anything reads
    the weights), then the schedule and the loss log. With ``distill > 0`` the loss adds the
    ``teacher``'s soft targets (:func:`distilled_cross_entropy`); ``labels`` weighs the
    cross-entropy on the labels (0 with ``distill``: the teacher alone).
    """
    if distill < 0 or not math.isfinite(distill):
        raise ConfigError(f"distill={distill}; expected a weight >= 0")
    if labels < 0 or not math.isfinite(labels):
        raise ConfigError(f"labels={labels}; expected a weight >= 0")
    if labels == 0 and not distill:
        raise ConfigError("labels=0 and distill=0 leave nothing to learn; set one above 0")
    if distill and teacher is None:
        raise ConfigError(f"distill={distill} needs a teacher model")
    batches.shift, batches.flip = config.shift, config.flip
    optimizer = build_optimizer(model, config)
    steps = min(config.steps_per_epoch or len(batches), len(batches))
    extra: list[Hook] = [LossLogHook()]
    if config.schedule == "cosine":
        extra.insert(0, LRScheduleHook(WarmupCosine(total_steps=max(1, epochs * steps),
                                                    final_ratio=0.01)))  # fmt: skip
    if distill:
        teacher = teacher.to(device)
    trainer = Trainer(
        model,
        optimizer,
        distilled_cross_entropy(teacher, distill, labels) if distill else cross_entropy_loss,
        hooks=[*hooks, *extra],
        device=device,
        max_steps_per_epoch=config.steps_per_epoch,
        amp=config.amp,
    )
    state = trainer.fit(batches, epochs=epochs)
    return {k: float(v) for k, v in state.log.items()}
