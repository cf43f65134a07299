"""Structured pruning of whole channel groups at one global ratio.

A *channel group* is a set of output channels (filters of conv layers, rows of linear layers)
that must go together so the network can be shrunk physically: a Darknet model lists them in
``model.channel_groups()`` (channels tied by shortcuts, route groups and depthwise convs). A
model without that method gets one group per filter of every target. This module binds a
model's groups and scores to the pure projection
:func:`~yolo_prune.prune.projections.project_channel_groups` (re-exported here), which ranks
the groups by importance and removes the least important until the requested fraction of
channels is gone. A filter's importance is its L1 or L2 norm
divided by the mean norm of its layer's filters (so layers of different widths and scales are
comparable); a group's importance is the mean over its filters. The "fisher" criterion
measures instead, on training batches, how much the loss would rise without each channel
(:mod:`yolo_prune.prune.importance`); those scores are in loss units, comparable across layers
as they are, so they are not normalised per layer. Per-layer ``caps`` (from the conservative
policy) bound the fraction of each layer's filters that may go, and no layer is ever emptied.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from yolo_prune.errors import PruneError
from yolo_prune.prune.importance import ImportanceFn, whole_key
from yolo_prune.prune.projections import (
    NORMS,
    Projection,
    check_round_to,
    filter_norms,
    get_projection,
    project_channel_groups,
)

logger = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "bn", "fisher")  # "fisher" is measured on data, not read from weights
# What removing a channel group or block costs, which the ranking divides by and the ratio
# counts: channels (importance alone; the ratio a share of the channels) or flops (importance
# per FLOP; the ratio a share of the model's FLOPs).
COSTS = ("channels", "flops")
# Whether whole residual blocks are ranked: not at all, against the channels, or alone (no
# channel is cut: on Yolo-Fastest a block costs far less accuracy than the same FLOPs of thin
# channels, docs/structured_tuning.md section 15).
DEPTHS = (False, True, "only")


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
    if criterion not in CRITERIA or criterion == "fisher":
        known = ", ".join(c for c in CRITERIA if c != "fisher")
        raise PruneError(f"unknown weight criterion {criterion!r}; choose one of: {known}")
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
            out[n] = filter_norms(params[n], "l1" if criterion == "l1" else "l2")
    return out


def model_channel_groups(model: nn.Module, names: Sequence[str]) -> list[list[tuple[str, int]]]:
    """The model's channel groups restricted to the target weights ``names``.

    Uses ``model.channel_groups()`` when the model has it (groups with a member outside the
    targets are dropped: a protected or excluded layer cannot lose filters); otherwise every
    filter of every target is its own group.

    Raises:
        PruneError: a target none of whose filters may go, as the optional
            ``model.protected_channels() -> {name: reason}`` says (e.g. the convolution before
            a ``[yolo]`` layer when ``targets.protect="none"``), naming it and the reason.
    """
    wanted = set(names)
    method = getattr(model, "channel_groups", None)
    if method is None:
        params = dict(model.named_parameters())
        return [[(n, c)] for n in names for c in range(params[n].shape[0])]
    explain = getattr(model, "protected_channels", None)
    reasons = explain() if explain is not None else {}
    refused = [n for n in names if n in reasons]
    if refused:
        more = f" (and {len(refused) - 1} more targets)" if len(refused) > 1 else ""
        raise PruneError(
            f"{refused[0]} cannot lose channels: {reasons[refused[0]]}{more}; leave it out of "
            "the targets (targets.exclude) or prune it unstructured"
        )
    groups = [list(g) for g in method()]
    return [g for g in groups if g and all(name in wanted for name, _ in g)]


def model_blocks(
    model: nn.Module, names: Sequence[str]
) -> list[tuple[list[tuple[str, int]], str, float]]:
    """The residual blocks of ``model`` that may go whole, as ``(members, output, gflops)``:
    every filter of their layers, the weight whose output the branch adds, what they cost.
    From ``model.residual_blocks()`` (none for a model without it), keeping the blocks whose
    weights are all targets."""
    method = getattr(model, "residual_blocks", None)
    if method is None:
        return []
    wanted = set(names)
    shapes = {n: p.shape[0] for n, p in model.named_parameters() if n in wanted}
    return [
        ([(n, c) for n in b["weights"] for c in range(shapes[n])], b["output"], float(b["gflops"]))
        for b in method()
        if all(n in wanted for n in b["weights"])
    ]


def group_projection(
    model: nn.Module,
    names: Sequence[str],
    *,
    criterion: str,
    round_to: int = 1,
    cost: str = "channels",
    importance: ImportanceFn | None = None,
    depth: bool | str = False,
) -> Projection:
    """The ``global-channels`` projection of the methods that remove channel groups
    (``admm-filter``, ``channel``): bound to ``model``'s groups, ranked by ``criterion``, rounded to
    ``round_to``, with its residual blocks in the ranking if ``depth`` (see
    :func:`build_projection`)."""
    return build_projection(model, names, "global-channels", criterion=criterion, round_to=round_to,
                            importance=importance, cost=cost, depth=depth)  # fmt: skip


@dataclass(frozen=True)
class WeightProjection:
    """A method's choice of which weights it keeps, by name (:func:`build_projection` without
    channel groups). Mixed in before a schedule, whose checks its own precede:
    ``class MagnitudeConfig(WeightProjection, MagnitudeSchedule)``."""

    # global | global-lamp | layer | layer-filters | layer-inputs | layer-shapes | global-channels
    projection: str = "global"
    norm: str | None = None  # l1 | l2 group norm for structured projections (default l2)

    def __post_init__(self) -> None:
        get_projection(self.projection, norm=self.norm)
        schedule_checks = getattr(super(), "__post_init__", None)
        if schedule_checks is not None:
            schedule_checks()

    def build_projection(
        self, model: nn.Module, names: Sequence[str], importance: ImportanceFn | None = None
    ) -> Projection:
        return build_projection(model, names, self.projection, norm=self.norm)


@dataclass(frozen=True)
class GroupProjection:
    """A method's choice of whole channel groups (tied filters) at one global ratio of channels
    (:func:`group_projection`), so the pruned model can be shrunk physically. Mixed in before a
    schedule, whose checks its own precede: ``class ChannelConfig(GroupProjection,
    MagnitudeSchedule)``."""

    criterion: str = "fisher"  # fisher (loss rise on data) | l1 | l2 (filter norm) | bn (scale)
    round_to: int = 1  # layers that lose filters keep a multiple of this many (8 for CPU SIMD)
    cost: str = "channels"  # channels | flops: what the ranking divides by and the ratio counts
    depth: bool | str = False  # true: residual blocks compete with channels (whole branches
    # may go); only: blocks alone, no channel is cut (the ratio then counts FLOPs)

    def __post_init__(self) -> None:
        check_group_options(criterion=self.criterion, round_to=self.round_to, cost=self.cost,
                            depth=self.depth)  # fmt: skip
        schedule_checks = getattr(super(), "__post_init__", None)
        if schedule_checks is not None:
            schedule_checks()

    def build_projection(
        self, model: nn.Module, names: Sequence[str], importance: ImportanceFn | None = None
    ) -> Projection:
        return group_projection(model, names, criterion=self.criterion, round_to=self.round_to,
                                cost=self.cost, importance=importance,
                                depth=self.depth)  # fmt: skip


def check_group_options(
    *, criterion: str, round_to: int, cost: str = "channels", depth: bool | str = False
) -> None:
    """The options of a method that removes channel groups: a known ``criterion``, ``cost``
    and ``depth`` that go together, and a positive int ``round_to``."""
    if criterion not in CRITERIA:
        raise PruneError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    if cost not in COSTS:
        raise PruneError(f"unknown cost {cost!r}; choose one of: {', '.join(COSTS)}")
    if depth not in DEPTHS:
        raise PruneError(f"depth={depth!r}; expected true, false or only")
    if depth and criterion != "fisher":
        raise PruneError(
            f"depth: {str(depth).lower()} ranks whole residual blocks by the loss rise each "
            f"would cause, which only criterion 'fisher' measures (got {criterion!r}); set "
            "criterion: fisher or depth: false"
        )
    if depth == "only" and cost != "flops":
        raise PruneError(
            "depth: only cuts whole residual blocks and no channels, so its ratio is a share of "
            "the model's FLOPs; set cost: flops"
        )
    check_round_to(round_to)


def build_projection(
    model: nn.Module,
    names: Sequence[str],
    projection: str,
    *,
    norm: str | None = None,
    criterion: str | None = None,
    round_to: int = 1,
    importance: ImportanceFn | None = None,
    cost: str = "channels",
    depth: bool | str = False,
) -> Projection:
    """The projection called ``projection``, made ready for ``model``'s targets ``names``.

    Only ``global-channels`` needs the model: it is bound to :func:`model_channel_groups` (so a
    removed group takes every filter tied to it) and, for ``criterion="bn"``, ranks by the
    batch-norm scales read from the model at each call; for ``criterion="fisher"``, by
    ``importance(model, names)`` (e.g. :func:`~yolo_prune.prune.importance.fisher_channel_scores` on
    training batches, which the caller binds), measured once, at the first call, on the model as it
    is then. ``criterion`` ("l1", "l2", "bn", "fisher"; default ``norm``, else "l2") and
    ``round_to`` apply to ``global-channels`` only. ``cost`` (:data:`COSTS`) says what a unit
    removed costs: ``channels`` ranks by importance alone and the ratio is a share of the
    channels; ``flops`` ranks by importance per FLOP (``model.channel_flops()`` over
    ``model.gflops()``), so a budget goes where it buys the most importance instead of to the
    cheapest channels, and the ratio is a share of the model's FLOPs (each unit's as if it went
    alone: see ``sizes`` in :func:`~yolo_prune.prune.projections.project_channel_groups`).
    ``depth`` (Fisher only) puts the model's removable residual blocks
    (``model.residual_blocks()``, whose weights are all targets) in the same ranking, each
    scored by the Fisher importance of its branch's whole output (per share of the FLOPs under
    ``cost: flops``): a block that goes has all its filters masked, and the shrunk model loses
    it. ``depth="only"`` ranks the blocks alone (no channel group is cut; ``cost: flops`` only,
    the ratio met to within one block).

    Weight and BN-scale scores are divided by each layer's
    mean score *at the first call* (the dense model's scale), not at every call: under ADMM the
    cut channels of a layer shrink its current mean, which would lift its kept channels in the
    global ranking and move the cut to other layers at every Z-step (measured: Z never settled,
    ``||W - Z|| / ||W||`` 0.2 -> 0.4 as rho grew). The result has the signature of every
    projection, ``(weights, ratio, *, caps) -> masks``, so ADMM's Z-step and magnitude pruning
    use it unchanged: the filters of removed groups are all False in the masks.
    """
    if projection != "global-channels":
        if criterion is not None or round_to != 1 or depth or cost != "channels":
            raise PruneError(
                "criterion, round_to, cost and depth apply to the 'global-channels' projection, "
                f"not {projection!r}"
            )
        return get_projection(projection, norm=norm)
    get_projection(projection, norm=norm)  # validates the norm
    criterion = criterion or norm or "l2"
    check_group_options(criterion=criterion, round_to=round_to, cost=cost, depth=depth)
    names = list(names)
    groups = model_channel_groups(model, names)  # a protected target is refused first
    if criterion == "fisher" and importance is None:
        raise PruneError(
            "criterion 'fisher' measures channel importance on training data, and none was "
            "given; run it through `yolo-prune prune` (which uses the recipe's data) or pick "
            "l1, l2 or bn"
        )
    if criterion == "bn":
        filter_scores(model, names, "bn")  # refuse a model without batch-norm scales now
    blocks = model_blocks(model, names) if depth else []
    if depth == "only":  # whole blocks alone compete; no channel group is cut
        if not blocks:
            raise PruneError(
                f"depth: only, but {type(model).__name__} has no residual block that may go "
                "whole among the targets; use depth: true or false"
            )
        groups = []
    costs: dict[str, torch.Tensor] = {}  # cost flops: each filter's share of the model's FLOPs
    block_shares: list[float] = []  # and each block's
    if cost == "flops":
        total = getattr(model, "gflops", None)
        flops = getattr(model, "channel_flops", None)
        if flops is None or total is None:
            raise PruneError(
                f"cost: flops needs what each channel costs, and {type(model).__name__} has no "
                "channel_flops() and gflops(); use cost: channels"
            )
        whole = max(float(total()), 1e-12)
        wanted = set(names)
        costs = {n: c / whole for n, c in flops().items() if n in wanted}
        block_shares = [g / whole for _, _, g in blocks]
    measured: dict[str, torch.Tensor] = {}
    scale: dict[str, float] = {}  # each layer's mean score at the first call

    def group_scores() -> dict[str, torch.Tensor] | None:
        if criterion == "bn":
            return filter_scores(model, names, "bn")
        if criterion == "fisher":
            if not measured:
                measured.update(importance(model, names))
            return measured
        return None

    def project(
        weights: Mapping[str, torch.Tensor],
        ratio: float,
        *,
        caps: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        norm = criterion if criterion in NORMS else "l2"
        scores = group_scores()
        if criterion != "fisher" and not scale:
            raw = (
                scores
                if scores is not None
                else {n: filter_norms(w, norm) for n, w in weights.items()}
            )
            scale.update({n: float(v.detach().abs().float().mean()) for n, v in raw.items()})
        if costs:  # importance per share of the cost (free channels, cost 0, rank last to go)
            raw = (
                scores
                if scores is not None
                else {n: filter_norms(w, norm) for n, w in weights.items()}
            )
            scores = {n: raw[n].detach().abs().float() / costs[n].to(raw[n].device).clamp(min=1e-12)
                      for n in weights}  # fmt: skip
        ranked = []
        for i, (members, output, _) in enumerate(blocks):  # fisher: ``measured`` is filled
            if whole_key(output) not in measured:
                raise PruneError(
                    f"depth needs the Fisher importance of whole outputs ({whole_key(output)}), "
                    "which the importance measure did not return"
                )
            score = float(measured[whole_key(output)])
            ranked.append((members, score / max(block_shares[i], 1e-12) if costs else score))
        return project_channel_groups(
            weights,
            groups,
            ratio,
            caps=caps,
            norm=norm,
            scores=scores,
            normalize=dict(scale) if scale else False,
            round_to=round_to,
            blocks=ranked,
            sizes=costs or None,
            block_sizes=block_shares,
        )

    return project
