"""Model figures that do not depend on data: parameter counts and sparsity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamStats:
    """How many numbers a set of tensors holds, and how many are non-zero."""

    total: int  # elements
    nonzero: int  # elements != 0

    @property
    def sparsity(self) -> float:
        """Fraction of zero elements, in [0, 1]."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    @property
    def compression(self) -> float:
        """``total / nonzero`` (how many times fewer non-zero numbers); inf if all are zero."""
        return self.total / self.nonzero if self.nonzero else float("inf")


def _tensors(
    source: nn.Module | Mapping[str, torch.Tensor], names: Iterable[str] | None
) -> dict[str, torch.Tensor]:
    tensors = dict(source.named_parameters()) if isinstance(source, nn.Module) else dict(source)
    if names is None:
        return tensors
    names = list(names)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise KeyError(f"no parameter named {missing[0]!r}")
    return {n: tensors[n] for n in names}


@torch.no_grad()
def param_stats(
    source: nn.Module | Mapping[str, torch.Tensor], names: Iterable[str] | None = None
) -> ParamStats:
    """Counts over a module's parameters (or a name -> tensor mapping), optionally a subset."""
    tensors = _tensors(source, names)
    total = sum(t.numel() for t in tensors.values())
    nonzero = sum(int(torch.count_nonzero(t)) for t in tensors.values())
    return ParamStats(total=total, nonzero=nonzero)


@torch.no_grad()
def layer_stats(
    source: nn.Module | Mapping[str, torch.Tensor], names: Iterable[str] | None = None
) -> dict[str, ParamStats]:
    """:class:`ParamStats` per tensor, in order."""
    return {
        n: ParamStats(total=t.numel(), nonzero=int(torch.count_nonzero(t)))
        for n, t in _tensors(source, names).items()
    }


def weight_names(model: nn.Module) -> list[str]:
    """Names of the weights of every conv/linear layer (what 'the weights' usually means)."""
    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [
        f"{name}.weight" if name else "weight"
        for name, m in model.named_modules()
        if isinstance(m, types) and getattr(m, "weight", None) is not None
    ]
