"""Structured pruning of whole channel groups at one global ratio.

A *channel group* is a set of output channels (filters of conv layers, rows of linear layers)
that must go together so the network can be shrunk physically: a Darknet model lists them in
``model.channel_groups()`` (channels tied by shortcuts, route groups and depthwise convs). A
model without that method gets one group per filter of every target.

:func:`project_channel_groups` ranks the groups by importance and removes the least important
until the requested fraction of channels is gone. A filter's importance is its L1 or L2 norm
divided by the mean norm of its layer's filters (so layers of different widths and scales are
comparable); a group's importance is the mean over its filters. Per-layer ``caps`` (from the
conservative policy) bound the fraction of each layer's filters that may go, and no layer is
ever emptied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from yolo_prune.errors import PruneError
from yolo_prune.prune.projections import check_ratio

logger = logging.getLogger(__name__)

Group = Sequence[tuple[str, int]]  # (weight name, output channel) pairs
NORMS = ("l1", "l2")


CRITERIA = ("l1", "l2", "bn")


def _norms(w: torch.Tensor, norm: str) -> torch.Tensor:
    flat = w.detach().reshape(w.shape[0], -1).float()
    return flat.abs().sum(1) if norm == "l1" else flat.pow(2).sum(1).sqrt()


def filter_scores(
    model: nn.Module, names: Sequence[str], criterion: str
) -> dict[str, torch.Tensor]:
    """Per-filter importance ``name -> [out]`` of the target weights ``names``.

    "l1"/"l2": the filter's weight norm. "bn": the absolute scale of the batch norm after the
    filter (network slimming): with BN a filter's output is renormalised, so its weight norm
    says little, while a small BN scale means a nearly constant channel, which folding removes
    almost losslessly. The model names that scale through the optional
    ``model.output_scale_name(weight_name) -> str | None``; targets without one fall back to L2.
    """
    if criterion not in CRITERIA:
        raise PruneError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    params = dict(model.named_parameters())
    lookup = getattr(model, "output_scale_name", None)
    if criterion == "bn" and lookup is None:
        raise PruneError(
            "criterion 'bn' needs the model to name each filter's batch-norm scale "
            "(model.output_scale_name); use 'l1' or 'l2' for this model"
        )
    out = {}
    for n in names:
        scale = lookup(n) if criterion == "bn" else None
        if scale is not None:
            out[n] = params[scale].detach().abs()
        else:
            out[n] = _norms(params[n], "l1" if criterion == "l1" else "l2")
    return out


def model_channel_groups(model: nn.Module, names: Sequence[str]) -> list[list[tuple[str, int]]]:
    """The model's channel groups restricted to the target weights ``names``.

    Uses ``model.channel_groups()`` when the model has it (groups with a member outside the
    targets are dropped: a protected or excluded layer cannot lose filters); otherwise every
    filter of every target is its own group.
    """
    wanted = set(names)
    method = getattr(model, "channel_groups", None)
    if method is None:
        params = dict(model.named_parameters())
        return [[(n, c)] for n in names for c in range(params[n].shape[0])]
    groups = [list(g) for g in method()]
    return [g for g in groups if g and all(name in wanted for name, _ in g)]


@torch.no_grad()
def project_channel_groups(
    weights: Mapping[str, torch.Tensor],
    groups: Sequence[Group],
    ratio: float,
    *,
    caps: Mapping[str, float] | None = None,
    norm: str = "l2",
    scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks that remove the least important channel groups.

    Args:
        weights: ``name -> weight`` (dim 0 = output channels) of the target layers.
        groups: channel groups over those weights (see :func:`model_channel_groups`).
        ratio: fraction of the groups' channels to remove, in [0, 1); groups are removed in
            order of importance until at least ``round(ratio * channels)`` channels are gone.
        caps: optional ``name -> c``: at most ``floor(c * filters)`` of a layer's filters go.
        norm: "l1" or "l2" filter norm, used where ``scores`` is not given.
        scores: optional ``name -> [out]`` importance of each filter (e.g. from
            :func:`filter_scores` with the "bn" criterion) instead of the weight norm.

    Returns:
        ``name -> bool`` masks shaped like the weights, False on removed filters.

    Raises:
        PruneError: bad ratio or norm, or the caps do not allow removing that many channels.
    """
    check_ratio(ratio)
    if norm not in NORMS:
        raise PruneError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    for grp in groups:
        for name, ch in grp:
            if name not in weights:
                raise PruneError(f"channel group member {name!r} is not a target weight")
            if not 0 <= ch < weights[name].shape[0]:
                raise PruneError(f"channel {ch} of {name!r} does not exist")
    raw = dict(scores) if scores is not None else {n: _norms(w, norm) for n, w in weights.items()}
    scores = {}
    for name in weights:
        s = raw[name].detach().abs().float()
        scores[name] = s / s.mean().clamp(min=1e-12)
    importance = torch.tensor(
        [sum(float(scores[n][c]) for n, c in g) / len(g) for g in groups], dtype=torch.float64
    )
    total = sum(len(g) for g in groups)
    target = round(ratio * total)
    limit = {
        n: min(w.shape[0] - 1, math.floor((caps or {}).get(n, 1.0) * w.shape[0]))
        for n, w in weights.items()
    }
    removed_per_layer = dict.fromkeys(weights, 0)
    chosen: list[int] = []
    removed = 0
    # stable sort: equal importance keeps the groups' order (deterministic)
    for gi in torch.argsort(importance, stable=True).tolist():
        if removed >= target:
            break
        per_layer: dict[str, int] = {}
        for name, _ in groups[gi]:
            per_layer[name] = per_layer.get(name, 0) + 1
        if any(removed_per_layer[n] + k > limit[n] for n, k in per_layer.items()):
            continue
        for n, k in per_layer.items():
            removed_per_layer[n] += k
        chosen.append(gi)
        removed += len(groups[gi])
    if removed < target:
        raise PruneError(
            f"ratio {ratio} asks for {target:,} of {total:,} channels, but the per-layer caps "
            f"allow removing only {removed:,}; lower the ratio or relax the policy's caps"
        )
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for gi in chosen:
        for name, ch in groups[gi]:
            masks[name][ch] = False
    logger.info("channel groups: removed %d of %d channels in %d groups", removed, total,
                len(chosen))  # fmt: skip
    return masks
