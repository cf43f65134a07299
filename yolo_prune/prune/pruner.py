"""The one shape every pruning method has: a config, and ``prune(model, calls)``.

``Pruner.run(model, *, fit, evaluate=None, importance=None)`` is the one way in (the job, the
tests and scripts call it); it hands the callbacks (see :mod:`yolo_prune.prune.base`) to the
method's :meth:`Pruner.prune` as one :class:`Callbacks` object, which also does what every
method does after choosing its masks: zero what they drop and fine-tune under them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from yolo_prune.prune.base import EvalFn, FitFn, PruneResult
from yolo_prune.prune.importance import ImportanceFn
from yolo_prune.prune.masks import MaskHook, apply_masks_


@dataclass(frozen=True)
class Callbacks:
    """What the caller lends a method: training, evaluation, and (optionally) importance."""

    fit: FitFn  # fit(phase, epochs, hooks): train with these hooks
    evaluate: EvalFn | None = None  # accuracy of the model as it is now, in [0, 1]
    importance: ImportanceFn | None = None  # importance(model, names) measured on data

    def apply_and_finetune(
        self, model: nn.Module, masks: dict[str, torch.Tensor], phase: str, epochs: int
    ) -> None:
        """Zero what ``masks`` drop and, with ``epochs``, fine-tune under them (phase
        ``phase``), the masks re-applied after every optimizer step."""
        apply_masks_(model, masks)
        if epochs:
            self.fit(phase, epochs, [MaskHook(masks)])

    def accuracy(self) -> dict[str, Any]:
        """``{"accuracy": evaluate()}``, or nothing without an ``evaluate`` callback."""
        return {"accuracy": self.evaluate()} if self.evaluate is not None else {}


class Pruner:
    """Base of every method: holds its (validated, frozen) config; subclasses implement
    :meth:`prune` and, where they can say what a cut would remove without training, ``plan``."""

    def __init__(self, config: Any):
        self.config = config

    def run(
        self,
        model: nn.Module,
        *,
        fit: FitFn,
        evaluate: EvalFn | None = None,
        importance: ImportanceFn | None = None,
    ) -> PruneResult:
        """Prune ``model`` in place (and retrain it through ``fit``); the masks and history."""
        return self.prune(model, Callbacks(fit=fit, evaluate=evaluate, importance=importance))

    def prune(self, model: nn.Module, calls: Callbacks) -> PruneResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement prune()")
