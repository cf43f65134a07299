"""Data-driven channel importance: how much the loss would rise without each channel.

Weight norms rank the filters of one layer well, but say little across layers: a network whose
layers are batch-normalised renormalises every filter, and an early thin layer matters more
than its norms suggest. :func:`fisher_channel_scores` measures instead, on a few training
batches, the second-order (Fisher) estimate of the loss increase when a channel is switched
off (Molchanov et al. 2019, "Importance estimation for neural network pruning"; Liu et al.
2021, "Group Fisher pruning"): put a gate ``m`` (= 1) on channel ``c`` of a layer's output
``a``; then ``dL/dm = sum over positions of a * dL/da``, and removing the channel costs about
``1/2 * E[(dL/dm)^2]`` over samples. The estimate is in units of the loss, the same for every
layer, so the scores of different layers can be ranked against each other as they are.

Model-agnostic: the channels of target ``name`` are read at the output of the module that
``model.channel_output(name)`` returns when the model has that method (Darknet: the whole
layer, after batch norm and activation, which is what the next layers see); otherwise at the
output of the module owning the parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from yolo_prune.errors import PruneError

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss
ImportanceFn = Callable[[nn.Module, Sequence[str]], dict[str, torch.Tensor]]


def whole_key(name: str) -> str:
    """The key under which :func:`fisher_channel_scores` returns the Fisher importance of the
    whole output of target ``name`` (one gate on every channel at once: what switching the
    layer's output off costs, how a residual branch ending in it is ranked)."""
    return f"{name}:whole"


def channel_output_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose output carries the output channels of parameter ``name``."""
    method = getattr(model, "channel_output", None)
    if method is not None:
        return method(name)
    owner = name.rsplit(".", 1)[0]
    try:
        return model.get_submodule(owner)
    except AttributeError:
        raise PruneError(f"{name!r} is not a parameter of a submodule of the model") from None


def fisher_channel_scores(
    model: nn.Module,
    names: Sequence[str],
    batches: Iterable[Any],
    loss: LossFn,
    *,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Fisher importance ``name -> [out]`` of every output channel of the targets ``names``.

    Args:
        model: left with its weights unchanged and its gradients cleared. It runs in training
            mode (so that ``loss`` gets what it expects, e.g. raw detection heads) but with
            every batch-norm and dropout layer in eval mode: the scores are those of the model
            as it will be pruned and deployed.
        names: target weights (dim 0 = output channels).
        batches: training batches, as ``loss`` takes them.
        loss: ``loss(model, batch)``, the mean over the batch's samples (the per-sample terms
            are recovered by scaling it back by the batch size, taken from the gradient's
            leading dimension).
        max_batches: stop after this many batches.

    Returns:
        Per target, the summed squared gate gradients (>= 0), in loss units squared; and under
        ``whole_key(name)``, a one-element tensor: the same for one gate on the whole output
        (the square of each sample's summed channel gates).

    Raises:
        PruneError: no batch, or a target whose channels never reached the loss.
    """
    modules = {n: channel_output_module(model, n) for n in names}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, __: Any, out: torch.Tensor) -> None:
            if out.requires_grad:
                out.retain_grad()
                outputs[name] = out

        return hook

    scores = {n: torch.zeros(p.shape[0], dtype=torch.float64)
              for n, p in model.named_parameters() if n in modules}  # fmt: skip
    wholes = {n: torch.zeros(1, dtype=torch.float64) for n in scores}
    if len(scores) != len(modules):
        missing = sorted(set(modules) - set(scores))
        raise PruneError(f"{missing[0]!r} is not a parameter of the model")
    was_training = model.training
    frozen = (nn.modules.batchnorm._BatchNorm, nn.Dropout)
    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    model.train()
    for m in model.modules():
        if isinstance(m, frozen):
            m.eval()
    seen = 0
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            outputs.clear()
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():  # the caller may be projecting under no_grad
                value = loss(model, batch)
                value.backward()
            for n, out in outputs.items():
                if out.grad is None:
                    continue
                # per-sample gate gradient; x B undoes the loss's mean over the batch
                gate = (out.detach() * out.grad).reshape(*out.shape[:2], -1).sum(2) * out.shape[0]
                scores[n] += gate.double().pow(2).sum(0).cpu()
                wholes[n] += gate.double().sum(1).pow(2).sum().cpu()
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not seen:
        raise PruneError("Fisher importance needs at least one training batch; got none")
    dead = [n for n, s in scores.items() if not bool(s.any())]
    if len(dead) == len(scores):
        raise PruneError("no gradient reached the targets' outputs; is the loss differentiable?")
    logger.info("Fisher channel importance from %d batches", seen)
    out = {n: s.float() / seen for n, s in scores.items()}
    out.update({whole_key(n): s.float() / seen for n, s in wholes.items()})
    return out
