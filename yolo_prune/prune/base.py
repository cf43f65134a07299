"""What every pruning method shares: the result type, the callbacks it is given, target setup.

A pruning method never trains by itself and never builds an optimizer or a data loader. The
caller hands it two callbacks:

``fit(phase: str, epochs: int, hooks: Sequence[Hook]) -> None``
    Train the model for ``epochs`` epochs with these extra hooks (the caller builds the
    optimizer, loader and any scheduler; ``phase`` names the step, e.g. ``"admm"``,
    ``"retrain"``, so the caller can pick a learning rate per phase).

``evaluate() -> float``
    Validation accuracy of the model as it is now, in ``[0, 1]`` (needed only by methods that
    decide from accuracy, such as Deep Compression's dynamic threshold).

``importance(model, names) -> {name: [out] scores}`` (optional)
    Per-channel importance measured on training data, e.g. Fisher importance
    (:func:`yolo_prune.prune.importance.fisher_channel_scores` bound to the caller's loader and
    loss); needed only by the ``fisher`` channel criterion.

So a classifier on MNIST and a detector on COCO go through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from yolo_prune.engine.hooks import Hook
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.targets import TargetConfig, select_targets, target_depths

FitFn = Callable[[str, int, Sequence[Hook]], None]
EvalFn = Callable[[], float]


@dataclass
class PruneResult:
    """What a method returns after it has pruned (and retrained) the model in place."""

    masks: dict[str, torch.Tensor]  # name -> bool keep-mask of every pruned target
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch/round figures
    info: dict[str, Any] = field(default_factory=dict)  # method-specific summary figures

    @property
    def sparsity(self) -> float:
        """Fraction of the targets' weights that the masks remove."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / total if total else 0.0


def prepare_targets(
    model: nn.Module, targets: TargetConfig, policy: ConservativePolicy | None
) -> tuple[list[str], dict[str, float] | None]:
    """The target names (depth order) and, with a policy, their per-layer caps."""
    names = select_targets(model, targets)
    caps = policy.caps(names, target_depths(model, names)) if policy is not None else None
    return names, caps


def target_weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``name -> parameter`` (the live tensors, not copies)."""
    params = dict(model.named_parameters())
    return {n: params[n] for n in names}


def check_state_names(hook: str, saved: Sequence[str], names: Sequence[str]) -> None:
    """Raise unless a checkpointed pruning hook's target names are this run's ``names``.

    Hooks of one class are keyed in a checkpoint by their rank among that class
    (:func:`~yolo_prune.engine.checkpoint.stateful_hooks`); comparing names makes a state that
    reaches the wrong hook (hooks passed in another order, other targets) fail loudly instead
    of resuming with another layer's Z, U or masks.
    """
    from yolo_prune.errors import PruneError

    if list(saved) == list(names):
        return
    diff = sorted(set(saved) ^ set(names))
    if diff:
        found = (
            f"is for {len(saved)} target(s), this run's {hook} has {len(names)}; they differ "
            f"in {', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}"
        )
    else:
        found = f"lists this run's {len(names)} target(s) in another order"
    raise PruneError(
        f"the checkpoint's {hook} state {found}; resume with the pruning settings and the "
        "hook order of the original run"
    )


def check_epochs(value: int, what: str, *, minimum: int = 0) -> int:
    """An epoch/round count as an int >= ``minimum``, or a ``PruneError``."""
    from yolo_prune.errors import PruneError

    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PruneError(f"{what}={value!r}; expected an integer >= {minimum}")
    return value
