"""Soft filter pruning (He et al. 2018) with a filter-decorrelation penalty.

At the end of every epoch the ``ratio`` of each layer's filters with the smallest norm (L1 by
default) are set to zero, but not frozen: they keep receiving gradients and may grow back, so
the set of pruned filters can change from epoch to epoch. During training a decorrelation
penalty pushes the filters of each layer apart, so that the ones removed carry little that the
others do not::

    lambda * sum_l ||F_l F_l^T - I||_F^2 / O_l^2

with ``F_l`` the layer's ``O_l`` filters flattened to rows and scaled to unit L2 norm. After the
soft epochs the filters are chosen for good (:func:`~yolo_prune.prune.projections.project_filters`)
and, if ``retrain_epochs > 0``, the network is fine-tuned with the masks held.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
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
from yolo_prune.prune.masks import apply_masks_
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.projections import check_ratio, project_filters, sparsity
from yolo_prune.prune.pruner import Callbacks, Pruner
from yolo_prune.prune.targets import TargetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoftFilterConfig:
    """Soft filter pruning: zero weak filters each epoch, let them recover, then fix them."""

    ratio: float  # fraction of each layer's filters zeroed, in [0, 1)
    epochs: int = 10  # soft-pruning epochs
    retrain_epochs: int = 0  # masked fine-tuning epochs after the final choice
    norm: str = "l1"  # filter norm used to rank filters: l1 | l2
    decorrelation: float = 1e-3  # weight of the decorrelation penalty (0: off)
    targets: TargetConfig = field(default_factory=TargetConfig)  # which weights are pruned
    policy: ConservativePolicy | None = None  # per-layer caps: a layer's ratio is min(r, cap)

    # the names of the fit() phases it runs (a recipe's `phases` keys)
    PHASES: ClassVar[tuple[str, ...]] = ("soft-filter", "retrain")

    def epochs_spent(self) -> int:
        """Training epochs the method spends in all (its budget)."""
        return self.epochs + self.retrain_epochs

    def needs_data(self) -> bool:
        """Whether it cannot run without training data (it trains, or measures on data)."""
        return True  # the soft-pruning epochs train

    def __post_init__(self) -> None:
        check_ratio(self.ratio)
        check_epochs(self.epochs, "soft-filter.epochs", minimum=1)
        check_epochs(self.retrain_epochs, "soft-filter.retrain_epochs")
        if self.norm not in ("l1", "l2"):
            raise PruneError(f"soft-filter.norm={self.norm!r}; choose one of: l1, l2")
        if not self.decorrelation >= 0:
            raise PruneError(f"soft-filter.decorrelation={self.decorrelation}; expected >= 0")


def decorrelation_penalty(weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``sum_l ||F_l F_l^T - I||_F^2 / O_l^2`` over layers (``F_l``: unit-norm filter rows).

    Zero filters (pruned) contribute nothing: their normalised rows are zero, and the identity
    is restricted to non-zero rows.
    """
    total = None
    for w in weights.values():
        rows = w.reshape(w.shape[0], -1)
        f = F.normalize(rows, dim=1)
        gram = f @ f.t()
        live = (rows.detach().abs().sum(dim=1) > 0).to(gram.dtype)
        term = (gram - torch.diag(live)).pow(2).sum() / (rows.shape[0] ** 2)
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


class SoftFilterHook(Hook):
    """Adds the decorrelation penalty to the loss; zeroes the weakest filters each epoch end."""

    def __init__(
        self,
        names: Sequence[str],
        config: SoftFilterConfig,
        *,
        caps: Mapping[str, float] | None = None,
    ):
        self.names = list(names)
        self.config = config
        self.caps = dict(caps) if caps else None
        self.history: list[dict[str, float]] = []
        self._params: dict[str, nn.Parameter] = {}
        self._last: dict[str, torch.Tensor] | None = None

    def masks(self) -> dict[str, torch.Tensor]:
        return project_filters(
            self._params, self.config.ratio, caps=self.caps, norm=self.config.norm
        )

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint: the history and which filters were kept at the last epoch end
        (``name -> bool Tensor[O]``, or ``None`` before the first), from which the next epoch
        counts the filters that changed side. The masks themselves are chosen afresh from the
        weights at every epoch end, and the weights are in the checkpoint."""
        return {"names": list(self.names), "history": self.history, "last": self._last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take over what :meth:`state_dict` returned.

        Raises:
            PruneError: the state is for other targets than this hook's.
        """
        check_state_names("SoftFilterHook", state["names"], self.names)
        self.history = copy.deepcopy(list(state["history"]))
        last = state["last"]
        self._last = None if last is None else {n: last[n].clone() for n in self.names}

    def before_train(self, state: TrainState) -> None:
        self._params = target_weights(state.model, self.names)

    def loss(self, state: TrainState, loss: torch.Tensor) -> torch.Tensor:
        lam = self.config.decorrelation
        if not lam:
            return loss
        return loss + lam * decorrelation_penalty(self._params)

    def epoch_end(self, state: TrainState) -> None:
        masks = self.masks()
        apply_masks_(state.model, masks)
        # How many filters changed side since the last epoch: filters do come back.
        changed = 0
        if self._last is not None:
            changed = sum(
                int((masks[n].reshape(masks[n].shape[0], -1)[:, 0] != self._last[n]).sum())
                for n in self.names
            )
        self._last = {n: m.reshape(m.shape[0], -1)[:, 0].clone() for n, m in masks.items()}
        row = {"epoch": state.epoch, "sparsity": sparsity(masks), "filters_changed": changed}
        self.history.append(row)
        state.log["filters_changed"] = float(changed)
        logger.info("soft-filter epoch %d: %s", state.epoch, row)


class SoftFilterPruner(Pruner):
    """Soft epochs with :class:`SoftFilterHook`, final filter masks, optional masked retrain."""

    def prune(self, model: nn.Module, calls: Callbacks) -> PruneResult:
        cfg = self.config
        names, caps = prepare_targets(model, cfg.targets, cfg.policy)
        hook = SoftFilterHook(names, cfg, caps=caps)
        # Fail on impossible requests (a layer emptied) before training.
        project_filters(target_weights(model, names), cfg.ratio, caps=caps, norm=cfg.norm)
        calls.fit("soft-filter", cfg.epochs, [hook])
        masks = project_filters(target_weights(model, names), cfg.ratio, caps=caps, norm=cfg.norm)
        calls.apply_and_finetune(model, masks, "retrain", cfg.retrain_epochs)
        history = [dict(h, phase="soft-filter") for h in hook.history]
        info = {"targets": names, "caps": caps, **calls.accuracy()}
        return PruneResult(masks=masks, history=history, info=info)
