"""Mish for CPU inference, compiled: the activation that dominates a pruned yolov4.

``aten::mish`` evaluates three transcendental functions per element (``x * tanh(log1p(e^x))``)
and, once channel pruning has cut the convolutions (whose cost falls with the product of input
and output widths), it takes almost half of yolov4's CPU forward pass (docs/bench_structured.md).
With ``n = e^x (e^x + 2)``, ``tanh(softplus(x)) = n / (n + 2)``: one exponential. Eager PyTorch
gains nothing from that form (each op is its own pass over memory), but ``torch.compile``
fuses it into one vectorised loop, about 8x faster than ``aten::mish`` on a 2-core CPU.

Agrees with Darknet's mish (softplus threshold 20) to float rounding: above 20 the output is
``x``, as ``tanh(x)`` is 1 in float32 there. :func:`~yolo_prune.detect.prepare_for_inference`
uses it for mish models on the CPU unless told ``compile_mish=False``: the first call of a
process compiles (some seconds, needs a C++ compiler; cached on disk afterwards), and a failed
compilation falls back to ``aten::mish`` with a warning.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

_THRESHOLD = 20.0  # Darknet's softplus threshold in mish (MISH_THRESHOLD)


def mish_one_exp(x: torch.Tensor) -> torch.Tensor:
    """``x * tanh(softplus(x))`` with one exponential (see the module doc)."""
    e = torch.exp(torch.clamp(x, max=_THRESHOLD))
    n = e * (e + 2.0)
    return torch.where(x > _THRESHOLD, x, x * n / (n + 2.0))


_compiled = None
_failed = False


def _compiled_mish():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(mish_one_exp, dynamic=True)
    return _compiled


class CompiledMish(nn.Module):
    """Inference-only mish through :func:`torch.compile` of :func:`mish_one_exp`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global _failed
        if _failed or x.requires_grad:
            return nn.functional.mish(x)
        try:
            return _compiled_mish()(x)
        except Exception as exc:  # a missing compiler, an unsupported platform
            _failed = True
            logger.warning("compiled mish unavailable (%s); using aten::mish", exc)
            return nn.functional.mish(x)


def compile_mish_(model: nn.Module) -> int:
    """Replace every ``nn.Mish`` in ``model`` by :class:`CompiledMish`, in place; returns how
    many were replaced."""
    swaps = [(parent, name) for parent in model.modules()
             for name, child in parent.named_children() if isinstance(child, nn.Mish)]  # fmt: skip
    for parent, name in swaps:
        setattr(parent, name, CompiledMish())
    return len(swaps)
