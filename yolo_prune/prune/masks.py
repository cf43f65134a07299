"""Keep-masks that survive training: momentum, weight decay, EMA, AMP, resumed optimizers.

A mask set is ``name -> bool Tensor`` (``True`` = kept), keyed by parameter name. The
:class:`MaskHook` makes pruned weights exactly zero after every optimizer step:

* ``after_backward``: gradients of pruned entries are zeroed, so momentum buffers and Adam's
  moments never accumulate for them (weight decay of a zero weight adds zero);
* ``after_step``: the weights are multiplied by their masks, which makes them exactly zero
  whatever the optimizer did (a dense momentum buffer from a resumed run, decoupled decay);
* ``before_train``: weights, optimizer state (``momentum_buffer``, ``exp_avg``, ...) and any
  ``extra`` modules (an EMA copy) are masked once, which covers resuming from a checkpoint.

An EMA copy that starts masked stays masked (it averages zeros); passing it as ``extra``
re-masks it after every step anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from yolo_prune.engine.hooks import Hook, TrainState
from yolo_prune.errors import PruneError
from yolo_prune.prune.base import check_state_names

Masks = Mapping[str, torch.Tensor]


def resolve(model: nn.Module, names: Sequence[str] | Masks) -> dict[str, nn.Parameter]:
    """``name -> Parameter`` for ``names`` in ``model``; raises if one is missing."""
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        if n not in params:
            raise PruneError(
                f"{type(model).__name__} has no parameter {n!r}; the masks belong to another model"
            )
        out[n] = params[n]
    return out


def check_masks(params: Mapping[str, torch.Tensor], masks: Masks) -> None:
    """Raise if a mask's shape differs from its parameter's."""
    for n, m in masks.items():
        if tuple(m.shape) != tuple(params[n].shape):
            raise PruneError(
                f"mask for {n} has shape {tuple(m.shape)}, the parameter {tuple(params[n].shape)}"
            )


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned entries of ``model``'s parameters, in place."""
    params = resolve(model, masks)
    check_masks(params, masks)
    for n, m in masks.items():
        p = params[n]
        p.masked_fill_(~m.to(device=p.device, dtype=torch.bool), 0.0)


@torch.no_grad()
def mask_optimizer_state_(optimizer: torch.optim.Optimizer, model: nn.Module, masks: Masks) -> None:
    """Zero every per-parameter optimizer state tensor (momentum, Adam moments) where pruned."""
    params = resolve(model, masks)
    for n, m in masks.items():
        state = optimizer.state.get(params[n], {})
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.shape == m.shape:
                v.masked_fill_(~m.to(device=v.device, dtype=torch.bool), 0)


class MaskHook(Hook):
    """Keep pruned weights exactly zero through training (see the module docstring).

    Args:
        masks: ``name -> bool Tensor`` (True = kept), shapes equal to the parameters'.
        extra: modules with the same parameter names (an EMA copy) to mask as well.
    """

    def __init__(self, masks: Masks, *, extra: Sequence[nn.Module] = ()):
        self.masks = dict(masks)
        self.extra = list(extra)
        self._params: dict[str, nn.Parameter] = {}
        self._pruned: dict[str, torch.Tensor] = {}  # ~mask on the parameter's device

    def state_dict(self) -> dict[str, Any]:
        """The masks (bool tensors) and their names, for a checkpoint."""
        return {"names": list(self.masks), "masks": dict(self.masks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Hold the checkpoint's masks from now on: a resumed run keeps the weights it pruned.

        Raises:
            PruneError: the masks are for other parameters than this hook's.
        """
        check_state_names("MaskHook", state["names"], list(self.masks))
        self.masks = {n: state["masks"][n].to(dtype=torch.bool).clone() for n in self.masks}
        if self._params:
            self._set_pruned()

    def before_train(self, state: TrainState) -> None:
        self._params = resolve(state.model, self.masks)
        check_masks(self._params, self.masks)
        self._set_pruned()
        self._mask_params()
        mask_optimizer_state_(state.optimizer, state.model, self.masks)
        for module in self.extra:
            apply_masks_(module, self.masks)

    def _set_pruned(self) -> None:
        self._pruned = {
            n: ~m.to(device=self._params[n].device, dtype=torch.bool) for n, m in self.masks.items()
        }

    @torch.no_grad()
    def _mask_params(self) -> None:
        for n, p in self._params.items():
            p.masked_fill_(self._pruned[n], 0.0)

    @torch.no_grad()
    def after_backward(self, state: TrainState) -> None:
        for n, p in self._params.items():
            if p.grad is not None:
                p.grad.masked_fill_(self._pruned[n], 0.0)

    def after_step(self, state: TrainState) -> None:
        self._mask_params()
        for module in self.extra:
            apply_masks_(module, self.masks)
