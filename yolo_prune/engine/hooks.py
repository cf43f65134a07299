"""Hook objects: how anything (pruning, logging, checkpoints) takes part in a training loop.

A :class:`Hook` overrides only the calls it needs. The :class:`~yolo_prune.engine.loop.Trainer`
calls every hook, in the order given, at these points::

    before_train(state)
    for each epoch:
        before_epoch(state)
        for each batch:
            before_step(state)
            loss = hook.loss(state, loss)      # chained: each hook may add terms to the loss
            loss.backward()
            after_backward(state)              # gradients are unscaled and may be edited
            optimizer.step()
            after_step(state)
        epoch_end(state)
    after_train(state)

Hooks receive the one mutable :class:`TrainState`; they may read the model, the optimizer,
the batch and the loss, write figures into ``state.log`` and set ``state.stop`` to end the run
early. The loop knows nothing of what a hook does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from yolo_prune.engine.distributed import all_reduce_mean

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop shares with its hooks; one instance lives through a whole ``fit``."""

    model: nn.Module  # the module being trained
    optimizer: torch.optim.Optimizer  # its optimizer
    epoch: int = 0  # current epoch, counted from 0 (or from ``start_epoch`` on resume)
    step: int = 0  # optimizer steps taken so far in this fit, over all epochs
    epoch_step: int = 0  # steps taken so far in the current epoch
    epochs: int = 0  # epoch index at which the run ends (exclusive)
    steps_per_epoch: int | None = None  # optimizer steps an epoch takes; None: not known
    batch: Any = None  # the current batch, already moved to the device
    loss: torch.Tensor | None = None  # the current step's total loss (after loss hooks)
    log: dict[str, float] = field(default_factory=dict)  # figures hooks want reported
    stop: bool = False  # set by a hook to end the run after the current step
    hooks: list[Any] = field(default_factory=list)  # the loop's hooks (a checkpoint saves theirs)
    scaler: Any = None  # the AMP gradient scaler (CUDA float16 only), else None


class Hook:
    """Base class of loop hooks; every method does nothing unless overridden."""

    def before_train(self, state: TrainState) -> None:
        """Called once, before the first epoch."""

    def before_epoch(self, state: TrainState) -> None:
        """Called at the start of each epoch."""

    def before_step(self, state: TrainState) -> None:
        """Called before the forward pass of each step (``state.batch`` is set)."""

    def loss(self, state: TrainState, loss: torch.Tensor) -> torch.Tensor:
        """Return the loss to minimise: ``loss`` itself or ``loss`` plus extra terms."""
        return loss

    def after_backward(self, state: TrainState) -> None:
        """Called after ``backward`` and before ``optimizer.step``; gradients may be edited."""

    def after_step(self, state: TrainState) -> None:
        """Called after ``optimizer.step()``; parameters may be edited in place."""

    def epoch_end(self, state: TrainState) -> None:
        """Called at the end of each epoch."""

    def after_train(self, state: TrainState) -> None:
        """Called once after the last epoch (also when a hook stopped the run early)."""


class LossLogHook(Hook):
    """Keep the running mean of the epoch's training loss in ``state.log['loss']``; at the
    epoch's end, average it over the ranks (under ``torchrun``), keep every figure of
    ``state.log`` in :attr:`last` and log them. Checkpointed, so that a resumed epoch reports
    the figures an uninterrupted one does."""

    def __init__(self) -> None:
        self._sum = 0.0  # this epoch's loss sum and steps so far
        self._n = 0
        self.last: dict[str, float] = {}  # the figures of the last finished epoch

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self._sum, "n": self._n, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sum, self._n = float(state["sum"]), int(state["n"])
        self.last = {k: float(v) for k, v in state["last"].items()}

    def before_epoch(self, state: TrainState) -> None:
        if state.epoch_step == 0:  # a resumed epoch's sums so far came with the checkpoint
            self._sum, self._n = 0.0, 0

    def after_step(self, state: TrainState) -> None:
        if state.loss is not None:
            self._sum += float(state.loss.detach())
            self._n += 1
            state.log["loss"] = self._sum / self._n

    def epoch_end(self, state: TrainState) -> None:
        if self._n:
            state.log.update(all_reduce_mean({"loss": self._sum / self._n}))
        self.last = {k: float(v) for k, v in state.log.items()}
        figures = " ".join(f"{k}={v:.4g}" for k, v in self.last.items())
        logger.info("epoch %d: %s", state.epoch, figures)
