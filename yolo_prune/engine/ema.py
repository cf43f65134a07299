"""Exponential moving average of a model's weights (the copy that is evaluated and saved)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from yolo_prune.engine.hooks import Hook, TrainState


class ModelEMA:
    """``ema = d * ema + (1 - d) * model`` after each optimizer step, with the decay ramped up
    as ``d = decay * (1 - exp(-updates / tau))`` so early averages are not dominated by the
    starting weights. Buffers (batch-norm statistics) are copied, not averaged.

    Args:
        model: the module being trained (copied; the copy is in eval mode, no gradients).
        decay: the decay reached after many updates.
        tau: updates over which the decay ramps up.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, tau: float = 2000.0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay}; expected [0, 1)")
        if tau <= 0:
            raise ValueError(f"tau={tau}; expected > 0")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0
        self._params = {n for n, _ in self.module.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average."""
        self.updates += 1
        d = self.decay * (1.0 - math.exp(-self.updates / self.tau))
        own = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point and name in self._params:
                own[name].mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                own[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])


class EMAHook(Hook):
    """Update a :class:`ModelEMA` after every optimizer step; checkpoints carry its state.

    A fresh EMA (no update yet) restarts from the model at ``before_train``, after the hooks
    placed before this one have run theirs (so an EMA starts from the masked weights).
    """

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    @torch.no_grad()
    def before_train(self, state: TrainState) -> None:
        if self.ema.updates == 0:
            self.ema.module.load_state_dict(state.model.state_dict())

    def after_step(self, state: TrainState) -> None:
        self.ema.update(state.model)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)
