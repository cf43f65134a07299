"""The fit loop: forward, loss, backward, step; everything else arrives as hooks.

The loop is deliberately small. It knows the model, an optimizer, a function that turns a batch
into a loss, and a list of :class:`~yolo_prune.engine.hooks.Hook` objects. Pruning, logging,
schedules and (later) checkpoints, EMA or mixed precision reach it only through hooks or by
subclassing :class:`Trainer` and overriding :meth:`Trainer.run_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from yolo_prune.engine.hooks import Hook, TrainState

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``compute_loss(model, batch) -> scalar loss``; the batch is already on the device."""


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor inside ``batch`` (nested tuples, lists, dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(moved) if isinstance(batch, list) else tuple(moved)
    return batch


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Classification loss for ``(images [B, C, H, W], labels [B] int64)`` batches.

    The model must return logits ``[B, K]`` in training mode.
    """
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels)


class Trainer:
    """Runs epochs of optimizer steps over a loader, calling hooks at fixed points.

    Args:
        model: the module to train.
        optimizer: an optimizer over (some of) the model's parameters.
        compute_loss: ``compute_loss(model, batch) -> scalar loss``.
        hooks: called in this order at every point (see :mod:`yolo_prune.engine.hooks`).
        device: where batches are moved before ``compute_loss``.
        max_steps_per_epoch: cut every epoch short after this many steps (tests, smoke runs).
        grad_clip: clip the norm of the loss's gradient to this value, before the hooks'
            ``after_backward``: a penalty gradient a hook adds there (ADMM's
            ``rho * (W - Z + U)``) is not clipped with it, or a large ``rho`` would be cut back
            to the clip norm and ADMM would stall.
        accumulate: batches whose gradients are summed per optimizer step (each batch's loss
            is divided by it); ``state.step``/``state.epoch_step`` count optimizer steps, and the
            hooks' ``before_step``/``after_backward``/``after_step`` run once per optimizer
            step. Batches left over at an epoch's end are dropped.
        amp: mixed precision: float16 autocast with a gradient scaler on CUDA (hooks'
            ``after_backward`` sees unscaled gradients), bfloat16 autocast on CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        compute_loss: LossFn,
        *,
        hooks: Sequence[Hook] = (),
        device: torch.device | str = "cpu",
        max_steps_per_epoch: int | None = None,
        grad_clip: float | None = None,
        accumulate: int = 1,
        amp: bool = False,
    ):
        if accumulate < 1:
            raise ValueError(f"accumulate={accumulate}; expected a positive integer")
        self.accumulate = accumulate
        self.model = model
        self.optimizer = optimizer
        self.compute_loss = compute_loss
        self.hooks = list(hooks)
        self.device = torch.device(device)
        self.max_steps_per_epoch = max_steps_per_epoch
        self.grad_clip = grad_clip
        self.state = TrainState(model=model, optimizer=optimizer, hooks=self.hooks)
        self._micro = 0  # batches accumulated towards the next optimizer step
        self.amp = amp
        cuda = self.device.type == "cuda"
        self._amp_dtype = torch.float16 if cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if amp and cuda else None
        self.state.scaler = self.scaler

    def _call(self, point: str) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self.state)

    def fit(
        self,
        loader: Iterable[Any],
        *,
        epochs: int,
        start_epoch: int = 0,
        start_step: int | None = None,
        start_epoch_step: int = 0,
    ) -> TrainState:
        """Train from ``start_epoch`` up to (not including) ``epochs``; return the final state.

        To resume in mid-epoch, pass the ``start_step`` (total) and ``start_epoch_step`` (within
        ``start_epoch``) that were reached; the loader must then yield only that epoch's
        remaining batches (a hook's ``before_epoch`` can position a sampler).
        """
        state = self.state
        state.epoch, state.epochs, state.stop = start_epoch, epochs, False
        if start_step is not None:
            state.step = start_step
        state.epoch_step = start_epoch_step
        state.steps_per_epoch = self._steps_per_epoch(loader)
        self.model.train()
        self._call("before_train")
        for epoch in range(start_epoch, epochs):
            state.epoch = epoch
            if epoch != start_epoch:
                state.epoch_step = 0
            self._micro = 0
            self._call("before_epoch")
            for batch in loader:
                state.batch = to_device(batch, self.device)
                if not self.run_step():
                    continue
                state.step += 1
                state.epoch_step += 1
                if state.stop or (
                    self.max_steps_per_epoch is not None
                    and state.epoch_step >= self.max_steps_per_epoch
                ):
                    break
            state.batch = None
            self._call("epoch_end")
            if state.stop:
                break
        self._call("after_train")
        return state

    def _steps_per_epoch(self, loader: Iterable[Any]) -> int | None:
        """Optimizer steps one whole epoch of ``loader`` takes, or None for a loader of no
        length. A sampler that says it (:class:`~yolo_prune.engine.distributed.ChunkSampler`
        ``steps_per_epoch``) is believed first: its length shrinks while it skips the
        steps of a resumed epoch."""
        steps = getattr(getattr(loader, "sampler", None), "steps_per_epoch", None)
        if not isinstance(steps, int):
            try:
                steps = len(loader) // self.accumulate  # type: ignore[arg-type]
            except TypeError:
                return None
        if self.max_steps_per_epoch is not None:
            steps = min(steps, self.max_steps_per_epoch)
        return steps

    def run_step(self) -> bool:
        """Forward/backward ``self.state.batch``; step the optimizer once ``accumulate``
        batches are in. Returns whether it stepped. Override for AMP etc."""
        state = self.state
        if self._micro == 0:
            self._call("before_step")
            self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self._amp_dtype, enabled=self.amp):
            loss = self.compute_loss(self.model, state.batch)
            for hook in self.hooks:
                loss = hook.loss(state, loss)
        if self.accumulate > 1:
            loss = loss / self.accumulate
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        detached = loss.detach()
        state.loss = detached if self._micro == 0 else state.loss + detached
        self._micro += 1
        if self._micro < self.accumulate:
            return False
        self._micro = 0
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self._call("after_backward")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._call("after_step")
        return True
