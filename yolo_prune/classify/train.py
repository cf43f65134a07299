"""Training a classifier for a number of epochs with the caller's hooks.

The classification counterpart of :func:`yolo_prune.detect.train.train_detector`: the prune job
calls it once per phase (the dense run, ADMM, the masked retraining) with the pruner's hooks;
it builds the optimizer and the schedule and knows nothing of pruning. Like the detector's, each
phase checkpoints to ``out/last.pt`` (model, optimizer, the hooks' state, RNG and the batches'
position) and continues from it with ``resume``, and under ``torchrun`` it trains with DDP, each
process on its part of every batch; only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from yolo_prune.data.classification import ShuffledBatches
from yolo_prune.engine.checkpoint import (
    CheckpointHook,
    load_checkpoint,
    restore_checkpoint,
    resume_position,
)
from yolo_prune.engine.distributed import broadcast_buffers_, dist_info
from yolo_prune.engine.hooks import Hook, LossLogHook, TrainState
from yolo_prune.engine.loop import LossFn, Trainer, cross_entropy_loss
from yolo_prune.engine.schedule import LRScheduleHook, WarmupCosine
from yolo_prune.errors import ConfigError, WeightsError

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class ClassifyTrainConfig:
    """How one phase trains a classifier (a recipe's ``train``, then its ``phases`` entry)."""

    batch_size: int = 128  # images per optimizer step (all processes together under torchrun)
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
    checkpoint_every: int = 0  # also checkpoint every this many optimizer steps (0: epochs only)

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
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"train.checkpoint_every={self.checkpoint_every}; expected steps >= 0 (0: epochs)"
            )


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


class _PositionHook(Hook):
    """Start each epoch of the batches (mid-epoch on resume); their position is checkpointed."""

    def __init__(self, batches: ShuffledBatches):
        self.batches = batches

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            self.batches.load_state_dict(state)
        except ValueError as exc:
            raise WeightsError(f"the checkpoint's data position does not fit: {exc}") from None

    def before_epoch(self, state: TrainState) -> None:
        self.batches.set_epoch(skip_steps=state.epoch_step)


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
    out: Path | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` epochs of ``batches``; the last epoch's figures.

    ``batches`` is re-augmented with ``config.shift``/``config.flip`` (a phase may set its own).
    The caller's ``hooks`` run first after the one that positions the batches (a pruning mask
    must see each step before anything reads the weights), then the schedule, the loss log and
    the checkpoint. With ``distill > 0`` the loss adds the
    ``teacher``'s soft targets (:func:`distilled_cross_entropy`); ``labels`` weighs the
    cross-entropy on the labels (0 with ``distill``: the teacher alone).

    With ``out``, the run is checkpointed to ``out/last.pt`` after every epoch and every
    ``config.checkpoint_every`` steps: the model, the optimizer, the state of every hook that
    has one (a pruner's ADMM Z/U or masks), the RNG states and the batches' position. With
    ``resume`` it continues from that checkpoint (a phase whose last epoch is in it trains no
    more) and ends with the weights of an uninterrupted run.

    Under ``torchrun`` (inside :func:`~yolo_prune.engine.distributed.distributed_session`)
    the model trains with DDP: each process takes its part of every batch of
    ``config.batch_size`` images, the gradients are averaged as one process's over the whole
    batch would be, rank 0 alone writes the checkpoint, and every rank leaves with rank 0's
    buffers (batch-norm statistics), so that every rank evaluates the same model. With batch
    norm each process normalises over its own part, so N processes equal one process only
    without it.

    Raises:
        ConfigError: bad weights of the loss terms, or ``resume`` without ``out``.
        WeightsError: a checkpoint that does not fit the model or the hooks.
    """
    if distill < 0 or not math.isfinite(distill):
        raise ConfigError(f"distill={distill}; expected a weight >= 0")
    if labels < 0 or not math.isfinite(labels):
        raise ConfigError(f"labels={labels}; expected a weight >= 0")
    if labels == 0 and not distill:
        raise ConfigError("labels=0 and distill=0 leave nothing to learn; set one above 0")
    if distill and teacher is None:
        raise ConfigError(f"distill={distill} needs a teacher model")
    if resume and out is None:
        raise ConfigError("resume needs the folder of the checkpoint: give out")
    info = dist_info(str(device))  # the entry point set the process group up (or none)
    model.to(info.device)
    batches.shift, batches.flip = config.shift, config.flip
    batches.shard(rank=info.rank, world_size=info.world_size)
    optimizer = build_optimizer(model, config)
    steps = min(config.steps_per_epoch or len(batches), len(batches))
    figures = LossLogHook()
    extra: list[Hook] = [figures]
    if config.schedule == "cosine":
        extra.insert(0, LRScheduleHook(WarmupCosine(total_steps=max(1, epochs * steps),
                                                    final_ratio=0.01)))  # fmt: skip
    if out is not None:  # last, so that it saves what every other hook did in the step
        settings = json.dumps(asdict(config), default=str)
        extra.append(
            CheckpointHook(out, every_steps=config.checkpoint_every, model=model,
                           enabled=info.is_main, extra=lambda: {"config": settings})
        )  # fmt: skip
    if distill:
        teacher = teacher.to(info.device)
    loss = distilled_cross_entropy(teacher, distill, labels) if distill else cross_entropy_loss
    if info.world_size > 1:
        ids = [info.local_rank] if "cuda" in info.device else None
        loss = _data_parallel(model, loss, batches, info.world_size, device_ids=ids)
    trainer = Trainer(
        model,
        optimizer,
        loss,
        hooks=[_PositionHook(batches), *hooks, *extra],
        device=info.device,
        max_steps_per_epoch=config.steps_per_epoch,
        amp=config.amp,
    )
    start = (0, 0, 0)
    ckpt = Path(out) / "last.pt" if out is not None else None
    if resume and ckpt.is_file():
        # On the CPU: the generators' states must be CPU tensors; the rest moves where it goes.
        data = load_checkpoint(ckpt, map_location="cpu")
        restore_checkpoint(data, model=model, optimizer=optimizer, hooks=trainer.hooks,
                           scaler=trainer.scaler)  # fmt: skip
        start = resume_position(data)
        logger.info("resuming from %s at epoch %d, step %d (%d into the epoch)", ckpt, *start)
    elif resume:
        logger.warning("%s: no checkpoint to resume from; starting afresh", ckpt)
    trainer.fit(batches, epochs=epochs, start_epoch=start[0], start_step=start[1],
                start_epoch_step=start[2])  # fmt: skip
    broadcast_buffers_(model)
    return dict(figures.last)


def _data_parallel(
    model: nn.Module,
    loss: LossFn,
    batches: ShuffledBatches,
    world_size: int,
    *,
    device_ids: list[int] | None,
) -> LossFn:
    """``loss`` through a DDP wrapper of ``model``, weighted so that the ranks' averaged
    gradients are the whole batch's.

    DDP averages the ranks' gradients of their own mean losses. A rank's mean times its share
    of the batch (``batches.share``) times ``world_size`` turns that average into the mean over
    the whole batch, also for a last batch of an epoch that the ranks share unevenly.
    """
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(model, device_ids=device_ids)

    def weighted(_: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return loss(wrapped, batch) * (batches.share * world_size)

    return weighted
