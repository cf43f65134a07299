"""The training loop and its hooks; knows nothing of pruning (pruning arrives as hooks)."""

from yolo_prune.engine.hooks import Hook, LambdaHook, LossLogHook, LRSchedulerHook, TrainState
from yolo_prune.engine.loop import Trainer, cross_entropy_loss, fit, to_device

__all__ = [
    "Hook",
    "LRSchedulerHook",
    "LambdaHook",
    "LossLogHook",
    "TrainState",
    "Trainer",
    "cross_entropy_loss",
    "fit",
    "to_device",
]
