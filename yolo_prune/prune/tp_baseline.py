"""Torch-Pruning's channel selection as a benchmark baseline (method ``torch-pruning``).

Torch-Pruning (Fang et al. 2023, "DepGraph: Towards any structural pruning"; the
``torch-pruning`` package, pinned at 1.6.1 in the ``bench`` extra) traces a model, groups the
layers whose channels must go together and ranks the channels of all groups at once. Here it
only *chooses*: its choice becomes our keep-masks, and what follows (masked fine-tuning,
folding, shrinking, export, the report) is the same code as for ``channel`` and
``admm-filter``. A benchmark row of this method therefore differs from theirs only in which
filters went. Torch-Pruning never edits the model: it runs on a deep copy, the groups it yields
(``pruner.step(interactive=True)``) are read, and ``group.prune()`` is never called.

Ratio. ``ratio`` means what it means for ``channel``: the fraction of the prunable groups'
filters to remove, where a group tying three layers (a shortcut chain) counts three filters.
Torch-Pruning's ``pruning_ratio`` with ``global_pruning=True`` counts channels of *its* groups,
where that chain counts once: removing 30% of Yolo-Fastest 1.1 XL's filters (COCO weights)
takes ``pruning_ratio=0.335``. So the ratio is converted: the pruner searches by bisection the
number ``n`` of Torch-Pruning channels to remove, passed as ``pruning_ratio = (n - 1/2) /
channels`` (so that its ``channels - int(channels * (1 - pruning_ratio))`` is exactly ``n``),
whose masks remove the fraction of filters nearest to ``ratio``; at equal distance the one at
or above it, as ``channel`` removes at least the asked count. The ratio used, the fraction
reached and the time taken are logged and returned in ``PruneResult.info``.

Groups. Torch-Pruning's removals are mapped back to parameter names (``named_modules()`` of
the copy) and then to the model's channel groups (:func:`model_channel_groups`):

* a group of ours of which Torch-Pruning removed some filters but not all is *split*, and is
  kept whole. Its graph did not see that tie (a route with ``groups=``, which the forward pass
  cuts with ``torch.chunk``: 224 of yolov4-tiny's groups), so it ranked those filters as
  separate channels. Keeping those means every filter removed is one that Torch-Pruning chose;
  the search then goes further down its ranking to make up the count. Removing them instead
  would cut filters it ranked above its threshold, and on yolov4-tiny (random weights) it
  empties a layer before 30% of the filters are gone;
* filters it removed outside our groups are kept: those channels cannot be cut structurally
  (a logistic layer, whose zero filter does not output zero; a group with a protected member);
* layers whose weights are not targets (the convolutions before ``[yolo]``, ``targets.exclude``)
  are Torch-Pruning's ``ignored_layers``, which keeps every group touching them.

Both counts (split groups, filters kept outside groups) are logged and returned in ``info``.
A choice that would empty a target is refused by the search, as Torch-Pruning itself refuses
to empty a layer.

Importance. ``magnitude``: ``GroupMagnitudeImportance(p=2)``, Torch-Pruning's default: the
squared L2 norms of a channel's weights in every layer of its group (convolutions in and out,
batch-norm scales), averaged over the group, divided by the group's mean. ``taylor``:
``GroupTaylorImportance``, ``|w * dL/dw|`` summed likewise, which needs the loss gradients of
the weights. Those come from the ``importance`` callback every pruner is given (the one the
``fisher`` criterion uses): the pruner runs it on the copy and keeps, summed over its batches,
the gradients of the backward passes it makes on training data with the training loss.

The model must say its input shape (``model.input_shape``, (C, H, W)): Torch-Pruning traces it
with one random input of that shape (in eval mode; it sets that mode itself).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import nn

from yolo_prune.errors import PruneError
from yolo_prune.prune.base import PruneResult, check_epochs, prepare_targets
from yolo_prune.prune.importance import ImportanceFn
from yolo_prune.prune.projections import Group, check_ratio, check_round_to, sparsity
from yolo_prune.prune.pruner import Callbacks, Pruner
from yolo_prune.prune.structured import model_channel_groups
from yolo_prune.prune.targets import TargetConfig, candidate_names

logger = logging.getLogger(__name__)

IMPORTANCES = ("magnitude", "taylor")


@dataclass(frozen=True)
class TorchPruningConfig:
    """Torch-Pruning chooses the channel groups to remove; then ``epochs`` of masked
    fine-tuning (default none: one-shot, as ``channel``)."""

    ratio: float  # fraction of the prunable groups' filters to remove, in [0, 1)
    importance: str = "magnitude"  # magnitude (group L2 norm) | taylor (|w * dL/dw|, on data)
    epochs: int = 0  # masked fine-tuning epochs (0: one-shot, no training)
    round_to: int = 1  # Torch-Pruning's own round_to: pruned layers keep multiples of this
    targets: TargetConfig = field(default_factory=TargetConfig)  # which weights are pruned

    # the names of the fit() phases it runs (a recipe's `phases` keys)
    PHASES: ClassVar[tuple[str, ...]] = ("finetune",)

    def epochs_spent(self) -> int:
        """Training epochs the method spends in all (its budget)."""
        return self.epochs

    def needs_data(self) -> bool:
        """Whether it cannot run without training data (it trains, or measures on data)."""
        return self.epochs > 0 or self.importance == "taylor"  # Taylor needs gradients

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "torch-pruning.ratio")
        if self.importance not in IMPORTANCES:
            raise PruneError(
                f"torch-pruning.importance={self.importance!r}; choose one of: "
                f"{', '.join(IMPORTANCES)}"
            )
        check_epochs(self.epochs, "torch-pruning.epochs")
        check_round_to(self.round_to)


def import_torch_pruning() -> ModuleType:
    """The ``torch_pruning`` package, or a one-line ``PruneError`` saying how to install it."""
    try:
        import torch_pruning
    except ImportError:
        raise PruneError(
            "method 'torch-pruning' needs the torch-pruning package (a benchmark baseline): "
            "pip install 'yolo_prune[bench]'"
        ) from None
    return torch_pruning


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


@dataclass
class _Choice:
    """Our masks for one count of Torch-Pruning channels."""

    tp_channels: int  # channels Torch-Pruning was asked to remove
    tp_ratio: float  # its pruning_ratio for that count
    masks: dict[str, torch.Tensor]
    removed: int  # filters the masks remove (whole groups of ours)
    split: int  # groups of ours that Torch-Pruning removed only in part, kept whole
    kept: int  # filters Torch-Pruning removed outside our groups, kept
    emptied: str | None  # a target with no filter left, if any


def loss_gradients_(
    model: nn.Module, names: Sequence[str], importance: ImportanceFn
) -> dict[str, torch.Tensor]:
    """Leave in every parameter's ``.grad`` the sum of its gradients over the backward passes
    that ``importance(model, names)`` makes (the callback's scores are not used); returns
    them by parameter name.

    Raises:
        PruneError: the callback made no backward pass that reached the weights.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            # Taken out at each backward, so a callback that clears the gradients between
            # batches and one that lets them pile up both give the plain sum.
            grad = param.grad.detach()
            sums[name] = sums[name] + grad if name in sums else grad.clone()
            param.grad = None

        return hook

    model.zero_grad(set_to_none=True)
    handles = [p.register_post_accumulate_grad_hook(keep(n)) for n, p in params]
    try:
        importance(model, names)
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise PruneError(
            "importance 'taylor' needs loss gradients, and the importance callback made no "
            "backward pass; run it through `yolo-prune prune` (which uses the recipe's data) or "
            "use importance 'magnitude'"
        )
    for n, p in params:
        p.grad = sums.get(n, torch.zeros_like(p))
    return {n: p.grad for n, p in params}


class _Selector:
    """Torch-Pruning on a copy of the model, asked for a number of channels at a time."""

    def __init__(
        self,
        tp: ModuleType,
        model: nn.Module,
        names: Sequence[str],
        groups: Sequence[Group],
        *,
        importance: str,
        gradients: ImportanceFn | None,
        saved: dict[str, torch.Tensor] | None = None,
        round_to: int = 1,
    ):
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise PruneError(
                "torch-pruning traces the model with an example input, and the model does not "
                "say its input shape (model.input_shape, (C, H, W))"
            )
        self.tp = tp
        self.round_to = round_to
        self.net = copy.deepcopy(model)  # in the model's mode, for the importance callback
        if importance == "taylor":
            if gradients is None:
                raise PruneError(
                    "importance 'taylor' measures on training data, and none was given; run it "
                    "through `yolo-prune prune` (which uses the recipe's data) or use "
                    "importance 'magnitude'"
                )
            if saved:  # measured by an earlier call on the same weights
                for n, p in self.net.named_parameters():
                    p.grad = saved[n].clone() if n in saved else None
            else:
                grads = loss_gradients_(self.net, names, gradients)
                if saved is not None:
                    saved.update({n: g.clone() for n, g in grads.items()})
        self.net.eval()  # no running statistics move in the trace (which sets eval mode anyway)
        device = next(self.net.parameters()).device
        self.example = torch.randn(1, *input_shape, device=device)
        self.importance = (
            tp.importance.GroupTaylorImportance()
            if importance == "taylor"
            else tp.importance.GroupMagnitudeImportance(p=2)
        )
        owner = {n: n.rsplit(".", 1)[0] for n in candidate_names(self.net)}
        self.target_of = {self.net.get_submodule(owner[n]): n for n in names}
        self.ignored = [self.net.get_submodule(o) for n, o in owner.items() if n not in names]
        self.names = list(names)
        self.groups = [list(g) for g in groups]
        self.group_of = {member: gi for gi, g in enumerate(self.groups) for member in g}
        self.shapes = {n: self.net.get_parameter(n).shape for n in names}
        self.channels = self._pruner(0.0).initial_total_channels

    def _pruner(self, ratio: float) -> Any:
        try:
            with torch.enable_grad():  # the trace follows the autograd graph
                return self.tp.pruner.BasePruner(  # formerly MetaPruner, now its alias
                    self.net,
                    example_inputs=self.example,
                    importance=self.importance,
                    global_pruning=True,
                    pruning_ratio=ratio,
                    ignored_layers=self.ignored,
                    round_to=self.round_to if self.round_to > 1 else None,
                )
        except Exception as exc:  # any failure of a third-party tracer is a result to record
            raise PruneError(f"torch-pruning could not trace the model: {_one_line(exc)}") from exc

    def choose(self, count: int) -> _Choice:
        """Our masks when Torch-Pruning removes ``count`` of its channels."""
        ratio = (count - 0.5) / self.channels if count else 0.0
        cut: dict[str, set[int]] = {n: set() for n in self.names}
        pruner = self._pruner(ratio) if count else None
        try:
            for group in pruner.step(interactive=True) if pruner is not None else ():
                for dep, idxs in group:
                    name = self.target_of.get(dep.target.module)
                    if name is not None and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                        cut[name].update(int(i) for i in idxs)
        except Exception as exc:
            raise PruneError(
                f"torch-pruning could not rank the channels: {_one_line(exc)}"
            ) from exc
        touched: dict[int, int] = {}
        kept = 0
        for name, channels in cut.items():
            for ch in channels:
                gi = self.group_of.get((name, ch))
                if gi is None:
                    kept += 1
                else:
                    touched[gi] = touched.get(gi, 0) + 1
        masks = {n: torch.ones(self.shapes[n], dtype=torch.bool) for n in self.names}
        gone = [gi for gi, k in touched.items() if k == len(self.groups[gi])]
        for gi in gone:
            for name, ch in self.groups[gi]:
                masks[name][ch] = False
        emptied = next((n for n, m in masks.items() if not bool(m.any())), None)
        return _Choice(
            tp_channels=count,
            tp_ratio=ratio,
            masks=masks,
            removed=sum(len(self.groups[gi]) for gi in gone),
            split=len(touched) - len(gone),
            kept=kept,
            emptied=emptied,
        )


def torch_pruning_masks(
    model: nn.Module,
    names: Sequence[str],
    ratio: float,
    *,
    importance: str = "magnitude",
    gradients: ImportanceFn | None = None,
    saved_gradients: dict[str, torch.Tensor] | None = None,
    round_to: int = 1,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Keep-masks of the targets ``names`` as Torch-Pruning chooses them (module docstring).

    Args:
        model: left unchanged (Torch-Pruning works on a deep copy).
        names: target weights (dim 0 = output channels); the other conv/linear layers are
            Torch-Pruning's ``ignored_layers``.
        ratio: fraction of the prunable groups' filters to remove, in [0, 1).
        importance: "magnitude" or "taylor".
        gradients: for "taylor", an importance callback whose backward passes give the loss
            gradients (e.g. :func:`~yolo_prune.detect.calibrate.fisher_importance`).
        saved_gradients: for "taylor", a dict that keeps the measured gradients for the next
            call on the same weights (filled by the first call, used by the later ones: a
            search over ratios measures them once).
        round_to: Torch-Pruning's ``round_to`` (1: none): each pruned layer keeps a multiple
            of this many channels, as ``channel``'s ``round_to``.

    Returns:
        ``name -> bool`` masks shaped like the weights, False on removed filters (whole groups
        of :func:`model_channel_groups`), and figures: ``tp_pruning_ratio``, ``tp_channels``
        (channels of Torch-Pruning's groups), ``tp_channels_removed``, ``filters`` and
        ``filters_removed`` (of our groups), ``removed_fraction``, ``groups_split``,
        ``filters_kept_outside_groups``, ``seconds``.

    Raises:
        PruneError: the package is missing, it cannot trace or rank, or no choice of it comes
            within one group of ``ratio`` without emptying a target.
    """
    check_ratio(ratio)
    if importance not in IMPORTANCES:
        raise PruneError(f"unknown importance {importance!r}; choose one of: magnitude, taylor")
    tp = import_torch_pruning()
    started = time.perf_counter()
    groups = model_channel_groups(model, names)
    selector = _Selector(tp, model, names, groups, importance=importance, gradients=gradients,
                         saved=saved_gradients, round_to=check_round_to(round_to))  # fmt: skip
    total = sum(len(g) for g in groups)
    target = round(ratio * total)
    tried = {0: selector.choose(0)}
    # Removed filters grow with the count (a global threshold that only rises), except where
    # Torch-Pruning skips a group that would empty a layer; every tried count is a candidate.
    lo, hi = 0, selector.channels + 1
    while target and hi - lo > 1:
        mid = (lo + hi) // 2
        tried[mid] = selector.choose(mid)
        if tried[mid].emptied is not None or tried[mid].removed >= target:
            hi = mid
        else:
            lo = mid
    fits = [c for c in tried.values() if c.emptied is None]
    best = min(fits, key=lambda c: (abs(c.removed - target), c.removed < target, c.tp_channels))
    # within one group of the target; with round_to, within one run of round_to groups
    largest = max((len(g) for g in groups), default=1) * round_to
    if abs(best.removed - target) > largest:
        raise PruneError(
            f"ratio {ratio} asks for {target:,} of {total:,} channels; torch-pruning's choices "
            f"come no nearer than {best.removed:,} (it leaves every layer a channel, groups it "
            "splits are kept, and round_to rounds); lower the ratio"
        )
    info = {
        "importance": importance,
        "tp_pruning_ratio": best.tp_ratio,
        "tp_channels": selector.channels,
        "tp_channels_removed": best.tp_channels,
        "filters": total,
        "filters_removed": best.removed,
        "removed_fraction": best.removed / total if total else 0.0,
        "groups_split": best.split,
        "filters_kept_outside_groups": best.kept,
        "seconds": time.perf_counter() - started,
    }
    logger.info(
        "torch-pruning (%s): pruning_ratio %.4f (%d of its %d channels) removes %d of %d "
        "filters (%.4f, asked %.4f); %d groups split (kept), %d filters outside our groups kept; "
        "%d tries, %.1f s",
        importance, best.tp_ratio, best.tp_channels, selector.channels, best.removed, total,
        info["removed_fraction"], ratio, best.split, best.kept, len(tried), info["seconds"],
    )  # fmt: skip
    return best.masks, info


class TorchPruningPruner(Pruner):
    """Masks from Torch-Pruning's choice, then masked fine-tuning (as ``channel``)."""

    def plan(
        self, model: nn.Module, ratio: float, *, importance: ImportanceFn | None = None
    ) -> dict[str, torch.Tensor]:
        """Torch-Pruning's choice at ``ratio`` as masks (nothing applied)."""
        names, _ = prepare_targets(model, self.config.targets, None)
        masks, _ = torch_pruning_masks(
            model, names, ratio, importance=self.config.importance, gradients=importance,
            saved_gradients=self._gradients_of(model), round_to=self.config.round_to,
        )  # fmt: skip
        return masks

    def _gradients_of(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Taylor's measured gradients for these weights (empty until first measured): a
        FLOPs search asks for many ratios of the same model."""
        with torch.no_grad():
            key = tuple(float(p.double().sum()) for p in model.parameters())
        if getattr(self, "_saved_key", None) != key:
            self._saved_key, self._saved = key, {}
        return self._saved

    def prune(self, model: nn.Module, calls: Callbacks) -> PruneResult:
        cfg = self.config
        names, _ = prepare_targets(model, cfg.targets, None)
        masks, info = torch_pruning_masks(
            model, names, cfg.ratio, importance=cfg.importance, gradients=calls.importance,
            saved_gradients=self._gradients_of(model), round_to=cfg.round_to,
        )  # fmt: skip
        masks = {n: m.to(model.get_parameter(n).device) for n, m in masks.items()}
        calls.apply_and_finetune(model, masks, "finetune-1", cfg.epochs)
        # in the history, which the job's report keeps: the benchmark reads the figures there
        row = {"phase": "torch-pruning", "ratio": cfg.ratio, "sparsity": sparsity(masks), **info}
        row.update(calls.accuracy())
        return PruneResult(masks=masks, history=[row], info={"targets": names, **info})
