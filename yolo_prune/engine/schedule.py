"""Learning-rate schedules as pure functions of the optimizer step, applied by a hook.

The rate depends only on ``state.step``, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from yolo_prune.engine.hooks import Hook, TrainState


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from ``warmup_start`` x the base rate, then a cosine down to
    ``final_ratio`` x the base rate at ``total_steps``."""

    total_steps: int  # optimizer steps of the whole run
    warmup_steps: int = 0  # steps of linear warm-up
    warmup_start: float = 0.01  # factor at step 0 of the warm-up
    final_ratio: float = 0.05  # factor at the last step

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps}; expected >= 1")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps}; expected 0..total_steps")
        if not 0.0 <= self.warmup_start <= 1.0 or not 0.0 <= self.final_ratio <= 1.0:
            raise ValueError("warmup_start and final_ratio must lie in [0, 1]")

    def factor(self, step: int) -> float:
        """Multiplier of the base rate at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min((step - self.warmup_steps) / span, 1.0)
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class LRScheduleHook(Hook):
    """Set every parameter group's ``lr`` to ``initial_lr * schedule.factor(state.step)``
    before each optimizer step (``initial_lr`` is recorded on the groups at the first call)."""

    def __init__(self, schedule: WarmupCosine):
        self.schedule = schedule

    def before_train(self, state: TrainState) -> None:
        for group in state.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def before_step(self, state: TrainState) -> None:
        f = self.schedule.factor(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
        state.log["lr"] = state.optimizer.param_groups[0]["lr"]
