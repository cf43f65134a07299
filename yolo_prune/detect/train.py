"""Fine-tuning a Darknet detector: data, loss, optimizer, schedule, EMA, checkpoints, DDP.

:func:`train_detector` is the one library call behind ``yolo-prune train``. It assembles the
generic :class:`~yolo_prune.engine.Trainer` with hooks; pruning reaches it the same way, as
``hooks`` the caller passes in (their ``state_dict()`` goes into every checkpoint), and
validation as a ``validate`` function the caller passes in (training imports no evaluation
code: :mod:`yolo_prune.eval` sits above :mod:`yolo_prune.detect`).

Files written under ``out`` (only by rank 0)::

    last.pt          checkpoint after every epoch (and every ``checkpoint_every`` steps)
    metrics.json     per-epoch figures (loss parts, lr, val AP/AP50)
    final.weights    Darknet weights at the end (the EMA copy when EMA is on)
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from yolo_prune.darknet import Darknet
from yolo_prune.data.augment import AugmentConfig
from yolo_prune.data.train_dataset import TrainDataset, collate_detection
from yolo_prune.detect.loss import YoloLoss, distillation_loss
from yolo_prune.detect.preprocess import model_letterbox
from yolo_prune.engine.batchnorm import recalibrate_batchnorm_
from yolo_prune.engine.checkpoint import (
    CheckpointHook,
    load_checkpoint,
    restore_checkpoint,
    resume_position,
)
from yolo_prune.engine.distributed import (
    ChunkSampler,
    DistInfo,
    all_reduce_mean,
    broadcast_buffers_,
    dist_info,
)
from yolo_prune.engine.ema import EMAHook, ModelEMA
from yolo_prune.engine.hooks import Hook, TrainState
from yolo_prune.engine.loop import Trainer
from yolo_prune.engine.schedule import LRScheduleHook, WarmupCosine
from yolo_prune.errors import ConfigError
from yolo_prune.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw", "adam")

ValidateFn = Callable[..., Mapping[str, Any]]
"""``validate(model, *, letterbox, device) -> figures`` (at least ``AP`` and ``AP50``, in
[0, 1]): the model on the validation data, its images made as the training images are
(``letterbox``), on ``device``. :func:`yolo_prune.eval.detection.build_validator` makes one;
training takes it from the caller so that it depends on no evaluation code."""


@dataclass(frozen=True)
class TrainConfig:
    """What to fine-tune, on what, and how."""

    cfg: Path  # Darknet .cfg
    data: Path  # training dataset folder (COCO JSON or YOLO txt layout)
    out: Path  # output folder (checkpoint, metrics, final weights)
    epochs: int  # epochs to train in all (a resumed run continues up to this)
    weights: Path | None = None  # Darknet .weights to start from (None: random init)
    val: Path | None = None  # validation dataset folder (None: no validation); the caller
    # builds train_detector(validate=...) from it (build_validator in yolo_prune.eval.detection)
    split: str | None = None  # training split (None: the first train* split)
    val_split: str | None = None  # validation split (None: the first val* split)
    size: int | None = None  # square input side, pixels (None: the cfg's)
    batch_size: int = 8  # images per micro-batch per process
    accumulate: int = 1  # micro-batches per optimizer step
    optimizer: str = "sgd"  # sgd (momentum, nesterov), adamw or adam
    lr: float = 1e-3  # base learning rate
    momentum: float = 0.9  # SGD momentum / Adam beta1
    weight_decay: float = 5e-4  # on conv weights only (not biases, not batch norm)
    warmup_epochs: float = 1.0  # linear warm-up length
    final_lr_ratio: float = 0.05  # cosine ends at this fraction of ``lr``
    ema: bool = True  # keep an EMA of the weights (evaluated and saved)
    ema_decay: float = 0.9999  # EMA decay after its ramp-up
    ema_tau: float = 2000.0  # EMA ramp-up, optimizer steps
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation
    letterbox: bool | None = None  # keep aspect ratio in training and validation; None: the
    # cfg's letter_box, as yolo-prune eval and detect take it (so val AP equals eval's)
    grad_clip: float | None = None  # clip the gradient norm (None: no clipping, as Darknet)
    bn_momentum: float | None = None  # override batch-norm momentum (None: the model's, 0.01
    # as in Darknet; from random init in few steps the running statistics lag far behind: 0.1)
    seed: int = 0  # shuffling, augmentation and random-init seed
    deterministic: bool = False  # torch deterministic algorithms (exact resume on CPU)
    workers: int = 0  # DataLoader worker processes
    val_every: int = 1  # validate every this many epochs (and after the last)
    checkpoint_every: int = 0  # also checkpoint every this many optimizer steps (0: epochs only)
    max_images: int | None = None  # train on the first images only (overfitting, smoke runs)
    resume: bool = False  # continue from ``out/last.pt`` if it is there
    device: str = "cpu"  # cpu or cuda
    amp: bool = False  # mixed precision (float16 + grad scaler on CUDA, bfloat16 on CPU)
    progress: bool = False  # tqdm progress bars
    max_steps: int | None = None  # stop after this many optimizer steps in all (tests)
    distill: float = 0.0  # weight of imitating a teacher's heads (train_detector(teacher=...))
    labels: float = 1.0  # weight of the YOLO loss on the labelled boxes; 0 with distill > 0:
    # learn from the teacher alone (a pruned model on few images: the labels overfit)
    recalibrate_bn: int = 64  # training images (un-augmented) that re-estimate the batch-norm
    # statistics of the evaluated and saved weights before each validation and at the end
    # (yolo_prune.engine.batchnorm); 0: keep the running averages, which lag the weights

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}; expected a positive integer")
        if self.batch_size < 1 or self.accumulate < 1:
            raise ConfigError("batch_size and accumulate must be positive integers")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr}; expected a positive number")
        if self.warmup_epochs < 0 or not 0 <= self.final_lr_ratio <= 1:
            raise ConfigError("warmup_epochs must be >= 0 and final_lr_ratio in [0, 1]")
        if self.size is not None and (self.size < 32 or self.size % 32):
            raise ConfigError(f"size={self.size}; expected a multiple of 32")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise ConfigError(f"bn_momentum={self.bn_momentum}; expected (0, 1]")
        if not (self.distill >= 0 and math.isfinite(self.distill)):
            raise ConfigError(f"distill={self.distill}; expected a weight >= 0")
        if not (self.labels >= 0 and math.isfinite(self.labels)):
            raise ConfigError(f"labels={self.labels}; expected a weight >= 0")
        if self.labels == 0 and self.distill == 0:
            raise ConfigError("labels=0 and distill=0 leave nothing to learn; set one above 0")
        if self.recalibrate_bn < 0:
            raise ConfigError(f"recalibrate_bn={self.recalibrate_bn}; expected images >= 0")
        if self.val_every < 1 or self.checkpoint_every < 0 or self.workers < 0:
            raise ConfigError("val_every >= 1, checkpoint_every >= 0 and workers >= 0")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (nesterov) or AdamW/Adam; weight decay on weights of rank > 1 only."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, betas=(config.momentum, 0.999))


class _EpochHook(Hook):
    """Position the sampler and the augmentation at each epoch (and mid-epoch on resume)."""

    def __init__(self, sampler: ChunkSampler, dataset: TrainDataset):
        self.sampler, self.dataset = sampler, dataset

    def before_epoch(self, state: TrainState) -> None:
        self.sampler.set_epoch(state.epoch, skip_steps=state.epoch_step)
        self.dataset.set_epoch(state.epoch)


class _FiguresHook(Hook):
    """Running means of the loss parts, reduced over ranks; progress bar; metrics.json."""

    def __init__(self, parts: dict[str, float], *, steps: int, info: DistInfo, config: TrainConfig):
        self.parts, self.steps, self.info, self.config = parts, steps, info, config
        self.sums: dict[str, float] = {}
        self.n = 0
        self.bar = None
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = json.loads(state["history"])

    def before_epoch(self, state: TrainState) -> None:
        self.sums, self.n = {}, 0
        state.log.clear()  # no figure of an earlier epoch (val AP) is reported as this one's
        if self.config.progress and self.info.is_main:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.steps, initial=state.epoch_step, desc=f"epoch {state.epoch}", unit="step"
            )

    def after_step(self, state: TrainState) -> None:
        figures = dict(self.parts)
        if state.loss is not None:
            figures["loss"] = float(state.loss)
        for k, v in figures.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{figures.get('loss', 0.0):.3f}")

    def epoch_end(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        means = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        state.log.update(all_reduce_mean(means))

    def record(self, state: TrainState) -> None:
        row = {"epoch": state.epoch, "step": state.step, **state.log}
        self.history.append(row)
        logger.info(
            "epoch %d: %s", state.epoch, " ".join(f"{k}={v:.4g}" for k, v in state.log.items())
        )
        if self.info.is_main:
            atomic_write_text(
                self.config.out / "metrics.json", json.dumps(self.history, indent=1) + "\n"
            )


def _recalibration(
    config: TrainConfig, size: tuple[int, int], classes: int, letterbox: bool
) -> Callable[[nn.Module], None]:
    """``recalibrate(model)``: its batch-norm statistics re-estimated on the first
    ``config.recalibrate_bn`` training images, un-augmented (a no-op for 0)."""
    if config.recalibrate_bn == 0:
        return lambda model: None
    dataset = TrainDataset(config.data, split=config.split, size=size, num_classes=classes,
                           augment=None, letterbox=letterbox,
                           max_images=config.recalibrate_bn)  # fmt: skip
    loader = DataLoader(dataset, batch_size=config.batch_size, collate_fn=collate_detection)

    def recalibrate(model: nn.Module) -> None:
        recalibrate_batchnorm_(model, (images for images, _ in loader))

    return recalibrate


class _ValHook(Hook):
    """COCO AP/AP50 of the evaluated model (EMA or raw) on the validation set (rank 0), its
    batch-norm statistics re-estimated first."""

    def __init__(
        self,
        model: nn.Module,
        figures: _FiguresHook,
        *,
        validate: ValidateFn | None,
        config: TrainConfig,
        info,
        letterbox: bool,
        recalibrate: Callable[[nn.Module], None],
    ):
        self.model, self.figures, self.config, self.info = model, figures, config, info
        self.validate, self.recalibrate = validate, recalibrate
        self.letterbox = letterbox  # as the training images are made

    def epoch_end(self, state: TrainState) -> None:
        c = self.config
        last = state.epoch + 1 >= state.epochs or state.stop
        if (
            self.validate is not None
            and self.info.is_main
            and ((state.epoch + 1) % c.val_every == 0 or last)
        ):
            was_training = self.model.training
            self.recalibrate(self.model)
            metrics = self.validate(self.model, letterbox=self.letterbox, device=self.info.device)
            self.model.train(was_training)
            state.log["val_AP"], state.log["val_AP50"] = metrics["AP"], metrics["AP50"]
        self.figures.record(state)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: TrainConfig) -> nn.Module:
    """The Darknet detector of ``config.cfg`` at ``config.size``, filled from its weights."""
    model = Darknet.from_cfg(config.cfg, size=config.size)
    if not model.is_detector:
        raise ConfigError(f"{config.cfg.name} has no [yolo] layer; train trains detectors")
    if config.weights is not None:
        model.load_weights(config.weights)
    return model


def train_detector(
    config: TrainConfig,
    *,
    hooks: Sequence[Hook] = (),
    model: nn.Module | None = None,
    teacher: nn.Module | None = None,
    validate: ValidateFn | None = None,
) -> dict[str, Any]:
    """Fine-tune (or train) a Darknet detector as ``config`` says.

    Args:
        config: the run.
        hooks: extra loop hooks (pruning: penalties, masks), called before the built-in EMA,
            figures and checkpoint hooks; those with ``state_dict()`` are checkpointed.
        model: a ready model (e.g. pruned) instead of building ``config.cfg`` + ``weights``;
            its input size must be ``config.size``.
        teacher: a detector with the same heads (e.g. the dense model before pruning) whose
            raw outputs the model imitates with weight ``config.distill``
            (:func:`~yolo_prune.detect.loss.distillation_loss`); it is not trained.
        validate: measures val AP/AP50 (the EMA copy when EMA is on) every
            ``config.val_every`` epochs and after the last (see :data:`ValidateFn`); ``None``:
            no validation, and then ``config.val`` must be ``None`` too.

    Returns:
        ``{"epochs", "steps", "history", "out", "final_weights", "model", "ema"}``: the final
        figures and the trained modules (``ema`` is ``None`` without EMA).

    Under ``torchrun`` every process calls it inside
    :func:`~yolo_prune.engine.distributed.distributed_session` (once per process, however many
    calls it makes); it trains with DDP in the group it finds and leaves the group as it was.

    Raises:
        ConfigError, DataError, WeightsError: bad options, data or checkpoint; started by
            torchrun in several processes with no process group set up.
    """
    if model is not None and config.weights is not None:
        raise ConfigError("give either a model or config.weights, not both")
    if config.val is not None and validate is None:
        raise ConfigError(
            f"config.val={str(config.val)!r} but no validate= was given; pass "
            "validate=yolo_prune.eval.detection.build_validator(config.val, ...) "
            "(yolo-prune train does)"
        )
    built = tuple(model.input_shape[1:]) if model is not None else None
    if built is not None and config.size is not None and built != (config.size, config.size):
        raise ConfigError(
            f"the model is built for {built[0]}x{built[1]} but config.size is {config.size}; "
            "build it at that size or leave size unset"
        )
    info = dist_info(config.device)  # the entry point set the process group up (or none)
    _seed_everything(config.seed)
    net = build_model(config) if model is None else model
    net.to(info.device)
    if config.bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    _, height, width = net.input_shape
    classes = YoloLoss.from_model(net).heads[0].classes
    letterbox = model_letterbox(net, config.letterbox)
    dataset = TrainDataset(
        config.data,
        split=config.split,
        size=(height, width),
        num_classes=classes,
        augment=config.augment,
        letterbox=letterbox,
        seed=config.seed,
        max_images=config.max_images,
    )
    sampler = ChunkSampler(
        len(dataset),
        batch_size=config.batch_size,
        accumulate=config.accumulate,
        rank=info.rank,
        world_size=info.world_size,
        seed=config.seed,
    )
    steps = sampler.steps_per_epoch
    if steps < 1:
        raise ConfigError(
            f"{len(dataset)} images make no full step of batch_size {config.batch_size} x "
            f"accumulate {config.accumulate} x {info.world_size} processes; lower them"
        )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_detection,
        drop_last=True,
    )
    forward: nn.Module = net
    if info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            net, device_ids=[info.local_rank] if "cuda" in info.device else None
        )
    yolo_loss = YoloLoss.from_model(net)
    parts: dict[str, float] = {}

    if config.distill > 0 and teacher is None:
        raise ConfigError(f"distill={config.distill} needs a teacher model")
    if teacher is not None and config.distill > 0:
        teacher = teacher.to(info.device).requires_grad_(False)
        teacher.train()  # raw heads out; but batch norm on running statistics, no dropout
        for m in teacher.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                m.eval()
    else:
        teacher = None

    def compute_loss(_: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, targets = batch
        heads = forward(images)
        loss, p = yolo_loss(heads, targets, (images.shape[-2], images.shape[-1]))
        loss = config.labels * loss
        if teacher is not None:
            with torch.no_grad():
                taught = teacher(images)
            kd = distillation_loss(heads, taught)
            p["distill"] = float(kd.detach())
            loss = loss + config.distill * kd
        parts.update(p)
        return loss

    optimizer = build_optimizer(net, config)
    total = steps * config.epochs
    schedule = WarmupCosine(
        total_steps=total,
        warmup_steps=min(int(round(config.warmup_epochs * steps)), total),
        final_ratio=config.final_lr_ratio,
    )
    ema = ModelEMA(net, decay=config.ema_decay, tau=config.ema_tau) if config.ema else None
    figures = _FiguresHook(parts, steps=steps, info=info, config=config)
    eval_model = ema.module if ema is not None else net
    recalibrate = _recalibration(config, (height, width), classes, letterbox)
    all_hooks: list[Hook] = [_EpochHook(sampler, dataset), LRScheduleHook(schedule), *hooks]
    if ema is not None:
        all_hooks.append(EMAHook(ema))
    all_hooks += [
        figures,
        _ValHook(
            eval_model,
            figures,
            validate=validate,
            config=config,
            info=info,
            letterbox=letterbox,
            recalibrate=recalibrate,
        ),
        # last, so that it saves what every other hook did in this step
        CheckpointHook(
            config.out,
            every_steps=config.checkpoint_every,
            model=net,
            enabled=info.is_main,
            extra=lambda: {"config": json.dumps(asdict(config), default=str)},
        ),
    ]
    if config.max_steps is not None:
        all_hooks.insert(0, _StopHook(config.max_steps))
    trainer = Trainer(
        net,
        optimizer,
        compute_loss,
        hooks=all_hooks,
        device=info.device,
        grad_clip=config.grad_clip,
        accumulate=config.accumulate,
        amp=config.amp,
    )
    start_epoch, start_step, start_epoch_step = 0, 0, 0
    ckpt = config.out / "last.pt"
    if config.resume and ckpt.is_file():
        data = load_checkpoint(ckpt, map_location=info.device)
        restore_checkpoint(
            data, model=net, optimizer=optimizer, hooks=all_hooks, scaler=trainer.scaler
        )
        start_epoch, start_step, start_epoch_step = resume_position(data)
        logger.info(
            "resuming from %s at epoch %d, step %d (%d into the epoch)",
            ckpt,
            start_epoch,
            start_step,
            start_epoch_step,
        )
    elif config.resume:
        logger.warning("%s: no checkpoint to resume from; starting afresh", ckpt)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        state = trainer.fit(
            loader,
            epochs=config.epochs,
            start_epoch=start_epoch,
            start_step=start_step,
            start_epoch_step=start_epoch_step,
        )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    recalibrate(eval_model)
    # Every rank leaves with rank 0's batch-norm statistics, so that every rank evaluates (and
    # decides on) the same model.
    broadcast_buffers_(net)
    if ema is not None:
        broadcast_buffers_(eval_model)
    final = config.out / "final.weights"
    if info.is_main:
        eval_model.save_weights(final)
    return {
        "epochs": config.epochs,
        "steps": state.step,
        "history": figures.history,
        "out": config.out,
        "final_weights": final,
        "model": net,
        "ema": eval_model if ema is not None else None,
    }


class _StopHook(Hook):
    def __init__(self, max_steps: int):
        self.max_steps = max_steps

    def after_step(self, state: TrainState) -> None:
        if state.step + 1 >= self.max_steps:
            state.stop = True
