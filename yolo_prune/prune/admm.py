"""ADMM pruning (Zhang et al. 2018), with a global-ratio projection and progressive stages.

Pruning as constrained training: minimise ``loss(W)`` subject to ``W`` in the set ``S`` of
weights that satisfy the sparsity constraint. ADMM splits ``W`` and a copy ``Z in S``:

* W-step: train on ``loss(W) + rho/2 * sum_l ||W_l - Z_l + U_l||^2`` (squared Frobenius norm);
* Z-step, every ``update_every`` steps (or at each epoch end): ``Z = project(W + U)``;
* U-step: ``U += W - Z``;
* start: ``Z0 = project(W0)``, ``U0 = 0``.

The projection is where methods differ: ``global`` (one ratio over all targets, optionally
with the conservative policy's caps: ours; ``global-lamp`` ranks on LAMP scores instead of
``|w|``), ``layer`` (a ratio per layer: the layer-wise
baseline), or a structured one (``filter``/``channel``/``shape``, as in ADAM-ADMM). Any optimizer
works (SGD, or Adam for ADAM-ADMM): the penalty's gradient ``rho * (W - Z + U)`` is added to
``W.grad`` in ``after_backward``, which is the same as adding the penalty to the loss but costs
one fused pass over the weights instead of an autograd graph.

``rho`` follows the problem unless it is given (``rho=None``, the default). It starts where
the penalty pulls as hard as the loss does (``||grad loss|| / ||W - Z||`` over the targets at the
first step, whatever the loss's scale or the weights' norms), and at every Z-step it is steered
along a residual path: ``||W - Z|| / ||W||`` should fall geometrically from its value at the
start to ``RESIDUAL_GOAL`` (0.02) at the end of the phase. rho doubles while the residual is
above the path (or jumps to the rho whose pull alone would catch the path up by the next
Z-step, if that is more: :meth:`ADMMHook.steer_`), never past ``RHO_MAX_GROWTH`` times its
first value, and is never lowered:
on the non-convex sparsity constraint a smaller rho lets the scaled dual U pile up on the cut
weights until they outrank kept ones and Z flips (seen on a convex toy too: rho halved when
ahead of the path fell below the level that holds the right support).
So the cut weights fade out over the whole phase instead of all at once,
and the hard prune at the end changes little. Under an Adam-type optimizer an adaptive rho's
penalty is decoupled from the optimizer, as AdamW decouples weight decay: after each step the
weights take the penalty's exact proximal step ``W <- (W + a (Z - U)) / (1 + a)`` with
``a = lr * rho``. Through Adam's normalised steps a weight moves at most about ``lr`` per step
whatever rho is, so the primal could not keep up with U and the residual grew instead of
falling (LeNet-5 at 99.3%: 1.88 at the cut, 89.6% held-out top-1); the proximal step is stable
for any rho. Under SGD (heavy ball) the penalty's gradient goes through the momentum, which
follows it stably only up to a bound (:func:`stable_rho`): an adaptive rho's pull goes into
the gradient up to that bound and the rest takes the same proximal step. Capping rho at the
bound instead left yolov3-tiny's progressive ADMM (0.3 -> 0.42 -> 0.5 in 5 epochs) at
``||W - Z|| / ||W||`` = 0.076 at its cut (the last stage gets one epoch); with the rest as a
proximal step it reached 0.005 and 0.011 on two splits of the training images, held-out AP50
+0.05 and +3.2 (docs/structured_tuning.md, section 11). All of rho as a proximal step under
SGD (no gradient part) converged too, but cut the channels of ``admm-filter`` within 15 steps
and cost 2.3 points at 0.65x FLOPs on both splits. A fixed rho keeps the penalty in the
gradient under every optimizer (ADAM-ADMM).
A fixed schedule (a number) grows by ``rho_growth`` at each stage instead. ``ratios`` may grow
too (progressive ADMM). Whenever
``rho`` changes, the scaled dual ``U`` is rescaled by ``rho_old / rho_new`` (Boyd et al. 2011,
3.4.1) so the unscaled multiplier is unchanged. Measured on yolov3-tiny (``admm-filter``, 30%):
a fixed ``rho`` of 1e-3 -> 0.1 against a YOLO loss of ~28 left the residual at 0.7 after 10
epochs (the hard prune was a blind cut); doubling rho at every Z-step without a path reached
0.03 in the 8th epoch, the loss jumping from 17 to 37 as every channel went at once.

``||W - Z||`` per layer is logged at every Z-step
and kept in ``ADMMHook.history``, so convergence is visible. After the ADMM epochs the weights are
hard-pruned to ``project(W)`` at the final ratio and retrained with the masks held.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from yolo_prune.engine.hooks import Hook, TrainState
from yolo_prune.errors import PruneError
from yolo_prune.prune.base import (
    PruneResult,
    check_epochs,
    check_state_names,
    prepare_targets,
    target_weights,
)
from yolo_prune.prune.importance import ImportanceFn
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.projections import Projection, check_ratio, get_projection
from yolo_prune.prune.pruner import Callbacks, Pruner
from yolo_prune.prune.structured import GroupProjection, WeightProjection
from yolo_prune.prune.targets import TargetConfig

logger = logging.getLogger(__name__)

PENALIZE = ("scale", "weight")
RESIDUAL_GOAL = 0.02  # adaptive rho: ||W - Z|| / ||W|| aimed at by the end of the ADMM phase
RHO_STEP = 2.0  # ... rho is multiplied by this at a Z-step above the path
RHO_MAX_GROWTH = 2.0**20  # ... and never grows past this multiple of its first value
ADAPTIVE_UPDATE_EVERY = 4  # Z-steps every this many optimizer steps when rho adapts


@dataclass(frozen=True)
class ADMMSchedule:
    """What every ADMM method shares: ADMM epochs (with rho/ratio stages), a hard prune, masked
    retraining. A method adds what Z keeps (:meth:`build_projection`): :class:`ADMMConfig`
    projects weights, :class:`ADMMFilterConfig` whole channel groups."""

    ratio: float  # final fraction of the targets' weights (or groups) to remove, in [0, 1)
    epochs: int = 10  # ADMM epochs (W-, Z- and U-steps)
    stages: int = 3  # the ADMM epochs are split evenly into this many stages
    rho: float | None = None  # penalty weight in the first stage; None: adaptive (module doc)
    rho_growth: float = 10.0  # a fixed rho is multiplied by this at each new stage
    ratios: tuple[float, ...] = ()  # progressive: ratio of each stage; empty: `ratio` throughout
    update_every: int | None = None  # optimizer steps between Z/U updates; 0: at each epoch
    # end; None: every ADAPTIVE_UPDATE_EVERY steps when rho adapts (it is steered at Z-steps),
    # else at each epoch end
    retrain_epochs: int = 5  # masked retraining epochs after the hard prune
    targets: TargetConfig = field(default_factory=TargetConfig)  # which weights are pruned
    policy: ConservativePolicy | None = None  # per-layer caps (conservative early layers)

    # the names of the fit() phases it runs (a recipe's `phases` keys)
    PHASES: ClassVar[tuple[str, ...]] = ("admm", "retrain")
    # its training leads up to the hard prune, so the job does not refit the cut to the dense
    # model by default (yolo_prune.jobs.recipe.variant_refit)
    TRAINS_TOWARDS_CUT: ClassVar[bool] = True

    def epochs_spent(self) -> int:
        """Training epochs the method spends in all (its budget)."""
        return self.epochs + self.retrain_epochs

    def needs_data(self) -> bool:
        """Whether it cannot run without training data (it trains, or measures on data)."""
        return True  # the ADMM phase trains

    def __post_init__(self) -> None:
        check_ratio(self.ratio)
        check_epochs(self.epochs, "admm.epochs", minimum=1)
        check_epochs(self.stages, "admm.stages", minimum=1)
        if self.update_every is None:
            every = ADAPTIVE_UPDATE_EVERY if self.rho is None else 0
            object.__setattr__(self, "update_every", every)
        check_epochs(self.update_every, "admm.update_every")
        check_epochs(self.retrain_epochs, "admm.retrain_epochs")
        if self.stages > self.epochs:
            raise PruneError(f"admm.stages={self.stages} exceeds admm.epochs={self.epochs}")
        if self.rho is not None and not (self.rho > 0 and math.isfinite(self.rho)):
            raise PruneError(f"admm.rho={self.rho}; expected a positive number or null (adaptive)")
        if not self.rho_growth >= 1:
            raise PruneError(f"admm.rho_growth={self.rho_growth}; expected >= 1")
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.ratios:
            if len(self.ratios) != self.stages:
                raise PruneError(
                    f"admm.ratios has {len(self.ratios)} entries but admm.stages={self.stages}; "
                    "give one ratio per stage"
                )
            for r in self.ratios:
                check_ratio(r, "admm.ratios entry")
            if self.ratios[-1] != self.ratio:
                raise PruneError(
                    f"admm.ratios ends at {self.ratios[-1]} but admm.ratio={self.ratio}; "
                    "the last stage must reach the final ratio"
                )

    def build_projection(
        self, model: nn.Module, names: Sequence[str], importance: ImportanceFn | None = None
    ) -> Projection:
        """The Z-step projection for ``model``'s targets ``names`` (``importance``: for a
        data-driven channel criterion)."""
        raise NotImplementedError(f"{type(self).__name__} does not say what Z keeps")

    def stage_of(self, epoch: int) -> int:
        """Stage (0-based) of ADMM epoch ``epoch`` (0-based, counted from the ADMM start)."""
        return min(self.stages - 1, epoch * self.stages // self.epochs)

    def stage_ratio(self, stage: int) -> float:
        return self.ratios[stage] if self.ratios else self.ratio

    def stage_rho(self, stage: int) -> float | None:
        """The fixed schedule's rho in ``stage``; None when rho adapts."""
        return None if self.rho is None else self.rho * self.rho_growth**stage

    def admm_variables(self, model: nn.Module, names: Sequence[str]) -> dict[str, str]:
        """``target weight -> parameter`` that ADMM drives to the constraint set: the weight
        itself (methods that prune channels may pick another, see :class:`ADMMFilterConfig`)."""
        return {n: n for n in names}


@dataclass(frozen=True)
class ADMMConfig(WeightProjection, ADMMSchedule):
    """ADMM over weights: Z keeps the weights a ``projection`` chooses (unstructured global by
    default; per layer, filter, channel or shape, see :mod:`yolo_prune.prune.projections`)."""


@dataclass(frozen=True)
class LayerwiseADMMConfig(ADMMConfig):
    """Layer-wise ADMM (Zhang et al. 2018): the same ``ratio`` removed from every layer."""

    projection: str = "layer"  # global | global-lamp | layer | layer-filters | layer-inputs |
    # layer-shapes


@dataclass(frozen=True)
class ADMMFilterConfig(GroupProjection, ADMMSchedule):
    """Filter-wise ADMM over channel groups: Z keeps whole groups (tied filters) at one global
    ratio of channels, ranked by ``criterion``, so the pruned model can be shrunk physically
    (see :mod:`yolo_prune.prune.structured`); the norms rank W + U. Yolo-Fastest's recipe ranks
    per FLOP with no caps (better on its training split, docs/structured_tuning.md)."""

    policy: ConservativePolicy | None = field(  # the first layer loses at most 20% of its
        default_factory=lambda: ConservativePolicy(first_cap=0.2, last_cap=0.5)  # channels, any
    )  # other at most half (measured on a training split: docs/structured_tuning.md)
    penalize: str = "scale"  # scale: ADMM drives each channel's batch-norm scale to Z (the
    # filter where a layer has no batch norm); weight: the filters themselves

    def __post_init__(self) -> None:
        if self.penalize not in PENALIZE:
            raise PruneError(
                f"admm-filter penalize={self.penalize!r}; choose one of: {', '.join(PENALIZE)}"
            )
        super().__post_init__()

    def admm_variables(self, model: nn.Module, names: Sequence[str]) -> dict[str, str]:
        """With ``penalize="scale"``, the batch-norm scale after each target filter bank.

        Batch norm undoes any shrinking of a filter: its output is the same for ``w`` and
        ``0.01 * w`` until the filter is nearly zero, so pulling filters to zero teaches the
        network nothing about losing the channel, and the hard prune still comes as a surprise.
        Pulling the scale to zero fades the channel out to a constant (its shift), which the
        network adapts to during ADMM and which the cut then folds into the next layer exactly
        (network slimming's reasoning, Liu et al. 2017, with ADMM's exact target instead of an
        L1 penalty). Layers without batch norm keep their filters as the variable.
        """
        lookup = getattr(model, "output_scale_name", None)
        if self.penalize == "weight" or lookup is None:
            return {n: n for n in names}
        return {n: lookup(n) or n for n in names}


class ADMMHook(Hook):
    """The ADMM W/Z/U machinery as a loop hook, for the targets ``names``.

    Args:
        names: target parameter names (see :func:`~yolo_prune.prune.targets.select_targets`).
        config: the ADMM settings (projection, stages, rho, update period).
        caps: per-layer caps on the pruned fraction (from the conservative policy).
        project: the projection to use (default: ``config.projection`` by name).
    """

    def __init__(
        self,
        names: Sequence[str],
        config: ADMMSchedule,
        *,
        caps: Mapping[str, float] | None = None,
        project: Projection | None = None,
    ):
        self.names = list(names)
        self.config = config
        self.caps = dict(caps) if caps else None
        # a model-bound projection (config.build_projection) where the plain one cannot do
        self.project: Projection = project or get_projection(config.projection, norm=config.norm)
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.rho = config.stage_rho(0)
        self.ratio = config.stage_ratio(0)
        self.history: list[dict[str, Any]] = []
        self.dual_residual = 0.0
        self._start_residual: float | None = None  # ||W0 - Z0|| / ||W0|| (adaptive rho's path)
        self._start_rho: float | None = None  # an adaptive rho's first value (its growth cap)
        self._epochs = 1  # epochs in this ADMM phase (adaptive rho's path)
        self._epoch_steps = 0  # optimizer steps per epoch, once the first epoch has ended
        self._params: dict[str, nn.Parameter] = {}
        self._start_epoch = 0  # the epoch this ADMM phase began at (stages count from it)
        self._resumed = False  # load_state_dict() ran: keep its _start_epoch in before_train

    # -- ADMM algebra ---------------------------------------------------------------------

    def init_(self, weights: Mapping[str, torch.Tensor]) -> None:
        """``Z0 = project(W0)``, ``U0 = 0``."""
        with torch.no_grad():
            masks = self.project(weights, self.ratio, caps=self.caps)
            self.Z = {n: weights[n].detach() * masks[n] for n in self.names}
            self.U = {n: torch.zeros_like(weights[n]) for n in self.names}
            gap = sum(float((weights[n].detach() - self.Z[n]).pow(2).sum()) for n in self.names)
            norm = sum(float(weights[n].detach().pow(2).sum()) for n in self.names)
            self._start_residual = math.sqrt(gap / norm) if norm else 0.0

    @torch.no_grad()
    def update_(self, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Z-step and U-step; returns ``||W - Z||_F`` per layer (after the Z-step). The dual
        residual ``rho * ||Z - Z_old||`` is kept in ``self.dual_residual``."""
        V = {n: weights[n].detach() + self.U[n] for n in self.names}
        masks = self.project(V, self.ratio, caps=self.caps)
        residual = {}
        moved = 0.0
        for n in self.names:
            z = V[n] * masks[n]
            moved += float((z - self.Z[n]).pow(2).sum())
            self.Z[n] = z
            # U + W - Z == V - Z: the part of W + U that the projection cut away.
            self.U[n] = V[n] - self.Z[n]
            residual[n] = float(torch.linalg.vector_norm(weights[n].detach() - self.Z[n]))
        self.dual_residual = (self.rho or 0.0) * math.sqrt(moved)
        return residual

    def _set_rho_(self, rho: float) -> None:
        """Change rho, rescaling the scaled dual U so the multiplier ``rho * U`` stays."""
        if self.rho is not None and rho != self.rho:
            scale = self.rho / rho
            for n in self.names:
                self.U[n].mul_(scale)
        self.rho = rho

    def steer_(self, relative: float, progress: float, *, lr: float = 0.0) -> None:
        """Steer an adaptive rho along the residual path (module doc): ``relative`` is the
        residual ``||W - Z|| / ||W||`` now, ``progress`` the fraction of the ADMM phase done
        (0..1), ``lr`` the step the penalty takes per unit of rho (:meth:`_lr`; 0: not given).

        Behind the path, rho doubles, and with ``lr`` rises at once to the catch-up value if
        that is larger: the rho whose pull alone (a contraction of ``W - Z + U`` by
        ``1 / (1 + lr * rho)`` a step, exact for the decoupled proximal step under Adam) would
        bring the residual back onto the path within the
        ``update_every`` steps to the next Z-step. Doubling alone is too slow when rho starts
        far too low: distillation from the dense teacher alone has next to no gradient at the
        first step (the student is the teacher), so rho started at 0.54 on Yolo-Fastest and the
        residual was still 0.43 at the cut after 36 steps.

        The proximal step is stable for any rho (under SGD, the part above
        :func:`stable_rho` takes it), so rho stops at ``RHO_MAX_GROWTH`` times its first value:
        a residual that cannot follow the path would otherwise double it until float32
        overflows (LeNet-5 at 99.3% with the penalty in Adam's gradient did)."""
        if self.config.rho is not None or self.rho is None:
            return
        cap = math.inf if self._start_rho is None else self._start_rho * RHO_MAX_GROWTH
        start = max(self._start_residual or relative, RESIDUAL_GOAL)
        path = start * (RESIDUAL_GOAL / start) ** min(max(progress, 0.0), 1.0)
        if relative > path:
            grown = self.rho * RHO_STEP
            every = self.config.update_every
            if lr > 0 and every and path > 0:
                grown = max(grown, ((relative / path) ** (1.0 / every) - 1.0) / lr)
            self._set_rho_(max(self.rho, min(grown, cap)))

    @torch.no_grad()
    def start_rho_(self, weights: Mapping[str, torch.Tensor]) -> None:
        """An adaptive rho's first value: ``||grad loss|| / ||W - Z + U||`` over the targets
        (called with the loss's gradients in place), so the penalty starts as strong as the
        loss whatever their scales."""
        grad = math.sqrt(sum(float(weights[n].grad.pow(2).sum()) for n in self.names
                             if weights[n].grad is not None))  # fmt: skip
        gap = math.sqrt(sum(float((weights[n] - self.Z[n] + self.U[n]).pow(2).sum())
                            for n in self.names))  # fmt: skip
        self.rho = grad / gap if grad > 0 and gap > 0 else 1.0
        self._start_rho = self.rho
        logger.info("admm: adaptive rho starts at %.4g (||grad|| %.4g, ||W - Z|| %.4g)",
                    self.rho, grad, gap)  # fmt: skip

    def penalty(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``rho/2 * sum_l ||W_l - Z_l + U_l||^2`` (differentiable in ``weights``)."""
        return (
            0.5
            * (self.rho or 0.0)
            * sum((weights[n] - self.Z[n] + self.U[n]).pow(2).sum() for n in self.names)
        )

    @torch.no_grad()
    def add_penalty_grad_(
        self, weights: Mapping[str, torch.Tensor], *, rho: float | None = None
    ) -> None:
        """``W.grad += rho * (W - Z + U)``: the gradient of :meth:`penalty` (``rho``: the part
        of the hook's rho that goes into the gradient, :meth:`_in_gradient`; all of it if not
        given)."""
        if self.rho is None:
            self.start_rho_(weights)
        ws = [weights[n] for n in self.names]
        grads = []
        for w in ws:
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            grads.append(w.grad)
        diff = torch._foreach_sub([w.detach() for w in ws], [self.Z[n] for n in self.names])
        torch._foreach_add_(diff, [self.U[n] for n in self.names])
        torch._foreach_add_(grads, diff, alpha=self.rho if rho is None else rho)

    def set_stage_(self, stage: int) -> bool:
        """Move to ``stage``'s rho and ratio (rescaling U); True if the ratio changed."""
        rho = self.config.stage_rho(stage)
        if rho is not None:  # a fixed schedule; an adaptive rho carries on
            self._set_rho_(rho)
        ratio = self.config.stage_ratio(stage)
        changed = ratio != self.ratio
        self.ratio = ratio
        return changed

    # -- checkpoint state -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this ADMM phase exactly: ``Z`` and ``U``
        (``name -> Tensor``, the targets' shapes), ``rho``, the stage's ``ratio``, the epoch the
        phase began at and the residual history; tensors and plain values only."""
        return {
            "names": list(self.names),
            "Z": dict(self.Z),
            "U": dict(self.U),
            "rho": self.rho,
            "ratio": self.ratio,
            "start_epoch": self._start_epoch,
            "history": self.history,
            "start_residual": self._start_residual,
            "start_rho": self._start_rho,
            "epoch_steps": self._epoch_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take over what :meth:`state_dict` returned (before ``fit`` resumes the run).

        Raises:
            PruneError: the state is for other targets than this hook's.
        """
        check_state_names("ADMMHook", state["names"], self.names)
        self.Z = {n: state["Z"][n].detach().clone() for n in self.names}
        self.U = {n: state["U"][n].detach().clone() for n in self.names}
        self.rho = None if state["rho"] is None else float(state["rho"])
        self.ratio = float(state["ratio"])
        self._start_epoch = int(state["start_epoch"])
        self.history = copy.deepcopy(list(state["history"]))
        self._start_residual = state.get("start_residual")
        self._start_rho = state.get("start_rho")
        self._epoch_steps = int(state.get("epoch_steps") or 0)
        self._resumed = True

    # -- hook points ----------------------------------------------------------------------

    def before_train(self, state: TrainState) -> None:
        self._params = target_weights(state.model, self.names)
        if not self._resumed:
            self._start_epoch = state.epoch
        self._resumed = False
        self._epochs = max(1, state.epochs - self._start_epoch)
        if not self.Z:
            self.init_(self._params)
        else:  # given by init_() or load_state_dict(): on the parameters' device
            self.Z = {n: z.to(self._params[n].device) for n, z in self.Z.items()}
            self.U = {n: u.to(self._params[n].device) for n, u in self.U.items()}

    def _decoupled(self, optimizer: torch.optim.Optimizer) -> bool:
        """An adaptive rho under an Adam-type optimizer: the penalty takes its own proximal
        step after the optimizer's (module doc)."""
        return self.config.rho is None and any(map(_normalised, optimizer.param_groups))

    def _in_gradient(self, optimizer: torch.optim.Optimizer) -> float:
        """The part of rho whose pull goes into the gradient: all of a fixed rho, an adaptive
        rho up to what SGD follows stably (:func:`stable_rho`), none under an Adam-type
        optimizer; the rest takes the decoupled proximal step (:meth:`prox_step_`)."""
        if self._decoupled(optimizer):
            return 0.0
        rho = self.rho or 0.0
        return rho if self.config.rho is not None else min(rho, stable_rho(optimizer))

    def after_backward(self, state: TrainState) -> None:
        if self.rho is None:  # the first step: rho from the loss's gradients
            self.start_rho_(self._params)
        pull = self._in_gradient(state.optimizer)
        if pull > 0:
            self.add_penalty_grad_(self._params, rho=pull)

    @torch.no_grad()
    def prox_step_(self, optimizer: torch.optim.Optimizer, rho: float | None = None) -> None:
        """``W <- (W + a (Z - U)) / (1 + a)``, ``a = lr * rho`` with each weight's current lr:
        the exact minimiser of ``rho/2 ||W - Z + U||^2 + ||W - W_now||^2 / (2 lr)`` (``rho``:
        the part of the hook's rho not in the gradient; all of it if not given)."""
        lrs = {id(q): float(g["lr"]) for g in optimizer.param_groups for q in g["params"]}
        for n in self.names:
            w = self._params[n]
            a = lrs.get(id(w), 0.0) * ((self.rho or 0.0) if rho is None else rho)
            if a > 0:
                w.mul_(1.0 / (1.0 + a)).add_(self.Z[n] - self.U[n], alpha=a / (1.0 + a))

    def after_step(self, state: TrainState) -> None:
        rest = (self.rho or 0.0) - self._in_gradient(state.optimizer)
        if rest > 0:
            self.prox_step_(state.optimizer, rest)
        every = self.config.update_every
        if every and state.step % every == every - 1:
            self._update_and_log(state)

    def epoch_end(self, state: TrainState) -> None:
        self._epoch_steps = self._epoch_steps or state.epoch_step
        local = state.epoch - self._start_epoch
        changed = self.set_stage_(self.config.stage_of(local + 1))
        if not self.config.update_every or changed:
            self._update_and_log(state)

    def _progress(self, state: TrainState) -> float:
        """Fraction of the ADMM phase done at this step (an epoch of unknown length, which
        only a loader without one gives before its first epoch ends, counts as half done)."""
        local = state.epoch - self._start_epoch
        steps = state.steps_per_epoch or self._epoch_steps
        if steps:
            within = min(state.epoch_step / steps, 1.0)
        else:
            within = 0.5
        return (local + within) / self._epochs

    def _lr(self, state: TrainState) -> float:
        """The step the penalty's pull takes per unit of rho: the targets' peak learning rate
        (a schedule's ``initial_lr``, else ``lr``), the largest over the groups that hold them,
        and under heavy-ball SGD divided by ``1 - momentum`` (a steady pull's step). Above
        :func:`stable_rho` the rest of rho pulls by the bare ``lr`` (its proximal step), so
        there the catch-up undershoots and rho's doubling makes up the difference."""
        ids = {id(w) for w in self._params.values()}

        def step(g: Mapping[str, Any]) -> float:
            lr = float(g.get("initial_lr", g["lr"]))
            return lr if _normalised(g) else lr / max(1.0 - float(g.get("momentum", 0.0)), 1e-3)

        return max(
            (step(g) for g in state.optimizer.param_groups
             if any(id(q) in ids for q in g["params"])),
            default=0.0,
        )  # fmt: skip

    def _update_and_log(self, state: TrainState) -> None:
        residual = self.update_(self._params)
        total = math.sqrt(sum(r * r for r in residual.values()))
        norms = {n: float(torch.linalg.vector_norm(self._params[n].detach())) for n in self.names}
        wnorm = math.sqrt(sum(v * v for v in norms.values()))
        rel = total / wnorm if wnorm else 0.0
        state.log["admm_residual"] = rel
        rho = self.rho
        self.steer_(rel, self._progress(state), lr=self._lr(state))
        self.history.append(
            {
                "epoch": state.epoch,
                "step": state.step,
                "rho": rho,
                "dual_residual": self.dual_residual,
                "ratio": self.ratio,
                "residual": total,
                "relative_residual": rel,
                "layers": residual,
                "layers_relative": {
                    n: r / norms[n] if norms[n] else 0.0 for n, r in residual.items()
                },  # fmt: skip
                # variables whose Z is all zero (a layer that goes whole: a residual block);
                # their relative residual is 1 however small W has become
                "layers_whole": [n for n in residual if not bool(self.Z[n].any())],
            }
        )
        logger.info(
            "admm epoch %d step %d: rho=%s ratio=%.4g ||W-Z||/||W||=%.4g; per layer %s",
            state.epoch,
            state.step,
            f"{rho:.3g}" if rho is not None else "auto",
            self.ratio,
            rel,
            " ".join(f"{n}={r:.3g}" for n, r in residual.items()),
        )


class ADMMPruner(Pruner):
    """Run ADMM, hard-prune to ``project(W)`` at the final ratio, retrain with the masks held."""

    def _setup(
        self, model: nn.Module, importance: ImportanceFn | None
    ) -> tuple[list[str], dict[str, float] | None, dict[str, str], Projection]:
        """Targets, caps, ADMM's variables (``target -> parameter``) and the projection over
        those variables."""
        cfg = self.config
        names, caps = prepare_targets(model, cfg.targets, cfg.policy)
        variables = cfg.admm_variables(model, names)
        return (
            names,
            caps,
            variables,
            _on_variables(cfg.build_projection(model, names, importance), variables),
        )

    @staticmethod
    @torch.no_grad()
    def _cut(
        model: nn.Module,
        project: Projection,
        variables: Mapping[str, str],
        ratio: float,
        caps: Mapping[str, float] | None,
    ) -> dict[str, torch.Tensor]:
        """The masks of the targets for ``project(variables)`` at ``ratio`` (per-channel
        variables broadcast to their filter banks)."""
        chosen = project(target_weights(model, list(variables.values())), ratio, caps=caps)
        weights = target_weights(model, list(variables))
        return {n: _expand(chosen[v], weights[n]) for n, v in variables.items()}

    def plan(
        self, model: nn.Module, ratio: float, *, importance: ImportanceFn | None = None
    ) -> dict[str, torch.Tensor]:
        """The masks a hard prune of ``model`` as it is would keep at ``ratio`` (``Z0``), without
        training; what a FLOPs target is searched on (with a fixed ranking such as Fisher's, the
        channels ADMM will remove)."""
        _, caps, variables, project = self._setup(model, importance)
        return self._cut(model, project, variables, ratio, caps)

    def prune(self, model: nn.Module, calls: Callbacks) -> PruneResult:
        """Prune ``model`` in place; the callbacks as in :mod:`yolo_prune.prune.base`."""
        cfg = self.config
        names, caps, variables, project = self._setup(model, calls.importance)
        hook = ADMMHook(list(variables.values()), cfg, caps=caps, project=project)
        # Check the request (ratio vs. caps, empty layers) before spending any epoch on it.
        hook.init_(target_weights(model, hook.names))
        calls.fit("admm", cfg.epochs, [hook])
        masks = self._cut(model, hook.project, variables, cfg.ratio, caps)
        calls.apply_and_finetune(model, masks, "retrain", cfg.retrain_epochs)
        history = [dict(h, phase="admm") for h in hook.history]
        info = {"targets": names, "caps": caps, "round_to": getattr(cfg, "round_to", 1),
                **calls.accuracy()}  # fmt: skip
        return PruneResult(masks=masks, history=history, info=info)


def _on_variables(project: Projection, variables: Mapping[str, str]) -> Projection:
    """``project`` (over the target weights) made to run over ADMM's ``variables`` (``weight
    name -> variable name``): a per-channel variable stands in for its filter bank, and the
    masks come back keyed and shaped like the variables. The identity map returns it as is."""
    if all(n == v for n, v in variables.items()):
        return project

    def on_variables(
        values: Mapping[str, torch.Tensor],
        ratio: float,
        *,
        caps: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        masks = project({n: values[v] for n, v in variables.items()}, ratio, caps=caps)
        return {v: masks[n] for n, v in variables.items()}

    return on_variables


def _expand(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A per-channel ``mask`` (``[out]``) broadcast to ``weight``'s shape (filters first)."""
    if mask.shape == weight.shape:
        return mask
    return mask.reshape(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()


def _normalised(group: Mapping[str, Any]) -> bool:
    """An Adam-type parameter group (Adam, AdamW...): steps normalised by gradient moments."""
    return "betas" in group


def stable_rho(optimizer: torch.optim.Optimizer) -> float:
    """The largest rho an adaptive rho may reach under SGD (heavy ball): an eighth of the
    bound ``lr * rho < 2 * (1 + momentum)`` of a quadratic of curvature rho alone. The loss's
    own curvature and the moving Z leave less room: yolov3-tiny's unstructured ADMM diverged
    at half of it (lr * rho = 1.9) and converged at lr * rho = 0.48. Adam-type optimizers
    normalise their steps, so they have no such bound (inf)."""
    bounds = [
        (1 + float(g.get("momentum", 0.0))) / (4 * float(g["lr"]))
        for g in optimizer.param_groups
        if not _normalised(g) and float(g["lr"]) > 0
    ]
    return min(bounds, default=math.inf)
