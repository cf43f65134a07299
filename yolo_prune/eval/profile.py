"""Model figures that do not depend on data: parameter counts, sparsity, multiply-accumulates.

:func:`count_macs` works on any ``nn.Module`` through forward hooks on its convolution and
linear layers (the layers that hold nearly all of a CNN's arithmetic); it reports the dense MACs
and the MACs left when multiplications by zero weights are skipped.
"""

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


@dataclass(frozen=True)
class MacStats:
    """Multiply-accumulates of one forward pass, per sample."""

    dense: int  # with every weight
    sparse: int  # skipping zero weights
    layers: dict[str, tuple[int, int]]  # module name -> (dense, sparse)


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> MacStats:
    """MACs per sample of ``model(example)`` over its conv and linear layers.

    A conv weight ``[O, I/g, kh, kw]`` costs ``weight.numel()`` MACs at each output position;
    a linear one ``[O, I]`` costs ``O * I`` per row of input. Biases, activations, pooling and
    normalisation are not counted. ``example`` is ``[B, ...]``; figures are divided by ``B``.
    """
    layers: dict[str, tuple[int, int]] = {}
    handles = []
    batch = example.shape[0]

    def hook(name: str):
        def fn(module: nn.Module, inputs, output) -> None:
            w = module.weight
            nz = int(torch.count_nonzero(w))
            if isinstance(module, nn.Linear):
                positions = output.numel() // output.shape[-1]
            else:
                positions = output.numel() // output.shape[1]
            d, s = layers.get(name, (0, 0))
            layers[name] = (d + positions * w.numel() // batch, s + positions * nz // batch)

        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            handles.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return MacStats(
        dense=sum(d for d, _ in layers.values()),
        sparse=sum(s for _, s in layers.values()),
        layers=layers,
    )
