"""Which weights are pruned, and the optional methods through which a model says more.

The pruning engine takes any ``nn.Module``; it never asks what class the model is. By default
the *targets* are the ``weight`` of every convolution (``nn.Conv1d/2d/3d``) and every
``nn.Linear`` in the model, in parameter-registration order (which for a Darknet model is the
cfg's layer order, so registration order is depth order). Everything is keyed by parameter
name (``layers.3.conv.weight``), never by module object, so masks survive checkpoints.

Model protocol (every method optional, found with ``getattr``)
--------------------------------------------------------------
``model.prune_ignore() -> Iterable[str]``
    Parameter names that pruning must leave dense: for a detector, the convolution feeding each
    ``[yolo]`` layer; for a classifier, its last layer. Names that are not targets are ignored.
    **Default** when the model has no such method: the *last target in registration order* is
    kept dense (for a classifier built the usual way, its output layer). Turn either off with
    ``TargetConfig(protect="none")``.

``model.prune_depth(name: str) -> int``
    Depth of the layer owning parameter ``name``, in the model's own units (Darknet: the cfg
    layer index). Used by the conservative policy (:mod:`yolo_prune.prune.policy`) to place a
    target relative to the backbone end. **Default**: the target's position in registration
    order (0, 1, 2, ...).

``model.channel_groups() -> list[list[tuple[str, int]]]``
    ``(weight name, filter)`` pairs that route/shortcut layers tie together, one list per prunable
    group. The ``global-channels`` projection (``admm-filter``, ``channel``, or ``projection:
    global-channels``) removes whole groups, so the surgery in ``yolo_prune.darknet`` can shrink the
    graph. **Default**: every filter is its own group.

``model.protected_channels() -> dict[str, str]``
    Weights none of whose filters may be removed structurally, with the reason (``"it feeds
    the [yolo] layer 30"``); the ``global-channels`` projection refuses such a target with that
    reason.

``model.channel_output(name: str) -> nn.Module``
    The module at whose output the channels of weight ``name`` are read by data-driven
    importance (:mod:`yolo_prune.prune.importance`): Darknet returns the whole layer, after its
    batch norm and activation. **Default**: the module owning the parameter.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from yolo_prune.errors import PruneError

# Layer types whose ``weight`` is a pruning target by default. These are layer types, not
# model classes: any model made of them works.
TARGET_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

PROTECT_CHOICES = ("auto", "none")


@dataclass(frozen=True)
class TargetConfig:
    """Which parameters a pruning method may zero.

    Patterns are ``fnmatch`` patterns on parameter names (``layers.1*.conv.weight``); each one
    must match at least one candidate, so a typo fails loudly instead of pruning nothing.
    """

    include: tuple[str, ...] = ()  # keep only candidates matching one of these (empty: all)
    exclude: tuple[str, ...] = ()  # then drop candidates matching one of these
    protect: str = "auto"  # "auto": model.prune_ignore() or the last target; "none": nothing

    def __post_init__(self) -> None:
        # YAML and CLI hand over lists; store tuples so the config stays hashable and frozen.
        object.__setattr__(self, "include", _as_patterns(self.include, "include"))
        object.__setattr__(self, "exclude", _as_patterns(self.exclude, "exclude"))
        if self.protect not in PROTECT_CHOICES:
            raise PruneError(
                f"targets.protect={self.protect!r}; choose one of: {', '.join(PROTECT_CHOICES)}"
            )


def _as_patterns(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    patterns = tuple(value)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise PruneError(f"targets.{what}: {p!r} is not a parameter-name pattern")
    return patterns


def candidate_names(model: nn.Module) -> list[str]:
    """Names of the weights of every conv/linear layer, in registration order."""
    names = []
    for mod_name, module in model.named_modules():
        if isinstance(module, TARGET_LAYER_TYPES) and getattr(module, "weight", None) is not None:
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def protected_names(model: nn.Module, targets: Sequence[str]) -> set[str]:
    """Targets kept dense under ``protect="auto"`` (see the module docstring)."""
    ignore = getattr(model, "prune_ignore", None)
    if callable(ignore):
        return set(ignore()) & set(targets)
    return {targets[-1]} if targets else set()


def select_targets(model: nn.Module, config: TargetConfig | None = None) -> list[str]:
    """Names of the parameters to prune, in registration (depth) order.

    Raises:
        PruneError: a pattern matches no candidate, or nothing is left to prune.
    """
    config = config or TargetConfig()
    names = candidate_names(model)
    # Decided on all candidates, so that include patterns never shift which layer is "last".
    keep = protected_names(model, names) if config.protect == "auto" else set()
    if not names:
        raise PruneError(f"{type(model).__name__} has no convolution or linear weights to prune")
    for what, patterns in (("include", config.include), ("exclude", config.exclude)):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
                raise PruneError(
                    f"targets.{what} pattern {p!r} matches no prunable parameter; "
                    f"names look like: {shown}"
                )
    if config.include:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in config.include)]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in config.exclude)]
    names = [n for n in names if n not in keep]
    if not names:
        raise PruneError(
            "no parameter left to prune after include/exclude and the protected layers; "
            "widen targets.include or set targets.protect='none'"
        )
    return names


def target_depths(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Depth of each target: ``model.prune_depth(name)`` if defined, else its position."""
    depth_of = getattr(model, "prune_depth", None)
    if callable(depth_of):
        return {n: int(depth_of(n)) for n in names}
    return {n: i for i, n in enumerate(names)}
