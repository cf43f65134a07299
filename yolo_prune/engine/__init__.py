"""The training loop and its hooks; knows nothing of pruning (pruning arrives as hooks)."""

from yolo_prune.engine.checkpoint import (
    CheckpointHook,
    load_checkpoint,
    restore_checkpoint,
    resume_position,
    save_checkpoint,
)
from yolo_prune.engine.ema import EMAHook, ModelEMA
from yolo_prune.engine.hooks import Hook, LossLogHook, TrainState
from yolo_prune.engine.loop import Trainer, cross_entropy_loss, to_device
from yolo_prune.engine.schedule import LRScheduleHook, WarmupCosine

__all__ = [
    "CheckpointHook",
    "EMAHook",
    "Hook",
    "LRScheduleHook",
    "ModelEMA",
    "WarmupCosine",
    "load_checkpoint",
    "restore_checkpoint",
    "resume_position",
    "save_checkpoint",
    "LossLogHook",
    "TrainState",
    "Trainer",
    "cross_entropy_loss",
    "to_device",
]
