"""Magnitude pruning, the rivals of ADMM: one-shot / iterative, and Deep Compression's threshold.

* :class:`MagnitudePruner` (``magnitude``): ``mask = project(W)`` then fine-tune with the mask
  held. With ``iterations > 1`` the ratio is reached in steps, the kept fraction shrinking
  geometrically (``1 - r_i = (1 - r) ** (i / iterations)``), fine-tuning after each step.
* ``channel`` (:class:`ChannelConfig`, the same pruner): whole channel groups go, ranked by
  Fisher importance measured on training data (default) or by a weight criterion, so the model
  can be shrunk physically for a real speedup; no fine-tuning unless ``epochs`` says so.
* :class:`DeepCompressionPruner` (``deep-compression``): Han et al. 2015's rule, a weight goes
  when ``|w| < quality * std_l`` (``std_l``: standard deviation of layer ``l``'s dense weights
  at the start), applied in rounds of prune-then-retrain with masks that only ever grow. The
  quality is **adjusted dynamically** from validation accuracy, after Lee & Park 2021: a round
  whose accuracy stays within ``tolerance`` of the reference is kept and the quality is raised
  by ``step``; a round that falls outside is undone (weights and masks restored) and ``step``
  shrinks by ``backoff``. The target ratio is not imposed; the sparsity is what the tolerance
  allows within the round budget.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from yolo_prune.errors import PruneError
from yolo_prune.prune.base import (
    PruneResult,
    check_epochs,
    prepare_targets,
    target_weights,
)
from yolo_prune.prune.importance import ImportanceFn
from yolo_prune.prune.masks import apply_masks_
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.projections import Projection, check_ratio, sparsity
from yolo_prune.prune.pruner import Callbacks, Pruner
from yolo_prune.prune.structured import GroupProjection, WeightProjection
from yolo_prune.prune.targets import TargetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MagnitudeSchedule:
    """What magnitude-style methods share: a cut at ``ratio`` (in ``iterations`` steps), each
    followed by masked fine-tuning. A method adds what the cut keeps (:meth:`build_projection`):
    :class:`MagnitudeConfig` weights, :class:`ChannelConfig` whole channel groups."""

    ratio: float  # final fraction of the targets' weights (or groups) to remove, in [0, 1)
    iterations: int = 1  # prune/fine-tune rounds to reach `ratio` (1: one-shot)
    epochs: int = 5  # fine-tuning epochs in all, split evenly over the iterations
    targets: TargetConfig = field(default_factory=TargetConfig)  # which weights are pruned
    policy: ConservativePolicy | None = None  # per-layer caps (conservative early layers)

    # the names of the fit() phases it runs (a recipe's `phases` keys)
    PHASES: ClassVar[tuple[str, ...]] = ("finetune",)

    def epochs_spent(self) -> int:
        """Training epochs the method spends in all (its budget)."""
        return self.epochs

    def needs_data(self) -> bool:
        """Whether it cannot run without training data (it trains, or measures on data)."""
        return self.epochs > 0

    def __post_init__(self) -> None:
        check_ratio(self.ratio)
        check_epochs(self.iterations, "magnitude.iterations", minimum=1)
        check_epochs(self.epochs, "magnitude.epochs")

    def iteration_ratio(self, i: int) -> float:
        """Ratio reached after iteration ``i`` (1-based)."""
        if i >= self.iterations:
            return self.ratio
        return 1.0 - (1.0 - self.ratio) ** (i / self.iterations)

    def build_projection(
        self, model: nn.Module, names: Sequence[str], importance: ImportanceFn | None = None
    ) -> Projection:
        """The projection choosing the masks (``importance``: only for a data criterion)."""
        raise NotImplementedError(f"{type(self).__name__} does not say what the cut keeps")


@dataclass(frozen=True)
class MagnitudeConfig(WeightProjection, MagnitudeSchedule):
    """One-shot (``iterations=1``) or iterative magnitude pruning with masked fine-tuning; the
    ``projection`` chooses the weights (unstructured global by default)."""


@dataclass(frozen=True)
class ChannelConfig(GroupProjection, MagnitudeSchedule):
    """Channel pruning for a real speedup: remove whole channel groups (tied filters) at one
    global ratio of channels, ranked by ``criterion``; then ``epochs`` of masked fine-tuning
    (default none: one-shot). ``fisher`` measures on training batches how much the loss rises
    without each channel (:mod:`yolo_prune.prune.importance`); ``l1``/``l2``/``bn`` read the
    weights (see :mod:`yolo_prune.prune.structured`)."""

    epochs: int = 0  # masked fine-tuning epochs (0: one-shot, no training)

    def needs_data(self) -> bool:
        """Whether it cannot run without training data (it trains, or measures on data)."""
        return self.epochs > 0 or self.criterion == "fisher"  # Fisher is measured on images


def _split(total: int, parts: int) -> list[int]:
    """``total`` epochs over ``parts`` rounds, the remainder going to the last rounds."""
    base, extra = divmod(total, parts)
    return [base + (1 if i >= parts - extra else 0) for i in range(parts)]


class MagnitudePruner(Pruner):
    """``mask = project(W)``, then masked fine-tuning; repeated ``iterations`` times."""

    def plan(
        self, model: nn.Module, ratio: float, *, importance: ImportanceFn | None = None
    ) -> dict[str, torch.Tensor]:
        """The masks of a one-shot cut of ``model`` at ``ratio`` (nothing applied)."""
        cfg = self.config
        names, caps = prepare_targets(model, cfg.targets, cfg.policy)
        project = cfg.build_projection(model, names, importance)
        with torch.no_grad():
            return project(target_weights(model, names), ratio, caps=caps)

    def prune(self, model: nn.Module, calls: Callbacks) -> PruneResult:
        cfg = self.config
        names, caps = prepare_targets(model, cfg.targets, cfg.policy)
        # "global-channels" is bound to the model's channel groups: whole groups go, ready for
        # surgery
        project = cfg.build_projection(model, names, calls.importance)
        history = []
        masks: dict[str, torch.Tensor] = {}
        for i, epochs in enumerate(_split(cfg.epochs, cfg.iterations), start=1):
            ratio = cfg.iteration_ratio(i)
            with torch.no_grad():
                new = project(target_weights(model, names), ratio, caps=caps)
            # Pruned weights are exactly zero, so they are the smallest and are cut again; the
            # `&` only guards against a structured projection choosing other groups.
            masks = {n: new[n] & masks[n] for n in names} if masks else new
            calls.apply_and_finetune(model, masks, f"finetune-{i}", epochs)
            row = {"phase": f"iteration-{i}", "ratio": ratio, "sparsity": sparsity(masks)}
            row.update(calls.accuracy())
            history.append(row)
            logger.info("magnitude iteration %d: %s", i, row)
        return PruneResult(masks=masks, history=history, info={"targets": names, "caps": caps})


@dataclass(frozen=True)
class DeepCompressionConfig:
    """Iterative pruning at ``|w| < quality * std``: with ``adaptive`` (the default), the
    quality is steered by validation accuracy (raised after a round that holds it, the round
    undone and the step shrunk after one that does not: the dynamic threshold); without, every
    round prunes at the same ``quality`` and is kept whatever the accuracy (Han et al. 2015's
    fixed threshold: weights that retraining moves under it go in later rounds)."""

    quality: float = 1.0  # quality of the first round (threshold = quality * layer std)
    adaptive: bool = True  # steer the quality by accuracy (False: fixed, every round kept)
    step: float = 0.25  # quality added after a kept round
    backoff: float = 0.5  # step multiplied by this after an undone round
    tolerance: float = 0.002  # accuracy drop allowed below the reference (0.002 = 0.2 points)
    rounds: int = 8  # prune/retrain rounds
    epochs_per_round: int = 1  # retraining epochs in each round
    max_ratio: float | None = None  # stop raising the quality past this sparsity (None: no cap)
    targets: TargetConfig = field(default_factory=TargetConfig)  # which weights are pruned

    # the names of the fit() phases it runs (a recipe's `phases` keys)
    PHASES: ClassVar[tuple[str, ...]] = ("round",)

    def epochs_spent(self) -> int:
        """Training epochs the method spends in all (its budget)."""
        return self.rounds * self.epochs_per_round

    def needs_data(self) -> bool:
        """Whether it cannot run without training data (it trains, or measures on data)."""
        # the adaptive threshold is steered by validation accuracy; every round retrains
        return self.adaptive or self.epochs_per_round > 0

    def __post_init__(self) -> None:
        if not self.quality > 0:
            raise PruneError(f"deep-compression.quality={self.quality}; expected > 0")
        if not self.step > 0:
            raise PruneError(f"deep-compression.step={self.step}; expected > 0")
        if not 0 < self.backoff < 1:
            raise PruneError(f"deep-compression.backoff={self.backoff}; expected in (0, 1)")
        if not 0 <= self.tolerance < 1:
            raise PruneError(f"deep-compression.tolerance={self.tolerance}; expected in [0, 1)")
        check_epochs(self.rounds, "deep-compression.rounds", minimum=1)
        check_epochs(self.epochs_per_round, "deep-compression.epochs_per_round")
        if self.max_ratio is not None:
            check_ratio(self.max_ratio, "deep-compression.max_ratio")


@torch.no_grad()
def threshold_masks(
    weights: dict[str, torch.Tensor],
    thresholds: dict[str, float],
    previous: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep ``|w| >= threshold_l`` (and what ``previous`` kept); never empties a layer.

    A layer whose threshold would remove everything keeps its largest weight.
    """
    masks = {}
    for n, w in weights.items():
        keep = w.detach().abs() >= thresholds[n]
        if previous is not None:
            keep &= previous[n]
        if not bool(keep.any()):
            keep = torch.zeros_like(keep)
            keep.view(-1)[w.detach().abs().argmax()] = True
        masks[n] = keep
    return masks


class DeepCompressionPruner(Pruner):
    """Han et al.'s std-scaled threshold, with the quality adjusted to hold the accuracy."""

    def prune(self, model: nn.Module, calls: Callbacks) -> PruneResult:
        cfg = self.config
        evaluate = calls.evaluate
        if evaluate is None and cfg.adaptive:
            raise PruneError(
                "deep-compression needs an evaluate() callback: it steers the threshold by "
                "validation accuracy"
            )
        names, _ = prepare_targets(model, cfg.targets, None)
        weights = target_weights(model, names)
        stds = {n: float(w.detach().std()) for n, w in weights.items()}
        reference = evaluate() if evaluate is not None else None
        masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        quality, step = cfg.quality, cfg.step
        accepted_quality = None
        history = []
        for r in range(1, cfg.rounds + 1):
            saved = copy.deepcopy(model.state_dict())
            trial = threshold_masks(weights, {n: quality * stds[n] for n in names}, previous=masks)
            calls.apply_and_finetune(model, trial, f"round-{r}", cfg.epochs_per_round)
            acc = evaluate() if evaluate is not None else None
            kept = not cfg.adaptive or acc >= reference - cfg.tolerance
            row = {
                "phase": f"round-{r}",
                "quality": quality,
                "sparsity": sparsity(trial),
                "accuracy": acc,
                "reference": reference,
                "kept": kept,
            }
            history.append(row)
            logger.info("deep-compression round %d: %s", r, row)
            if kept:
                masks, accepted_quality = trial, quality
                # Past max_ratio the quality holds: later rounds only retrain at this threshold.
                if cfg.adaptive and (cfg.max_ratio is None or sparsity(masks) < cfg.max_ratio):
                    quality += step
            else:
                model.load_state_dict(saved)
                step *= cfg.backoff
                quality = (accepted_quality if accepted_quality is not None else 0.0) + step
        apply_masks_(model, masks)
        info = {
            "targets": names,
            "reference_accuracy": reference,
            "final_quality": accepted_quality,
        }
        return PruneResult(masks=masks, history=history, info=info)
