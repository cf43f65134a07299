"""The conservative feature-extraction policy: one global ratio, fewer weights lost early.

With plain global top-k, a layer's share of the cut depends only on the magnitude of its
weights, and the first convolutions (few weights, each feeding every later feature) are easily
hollowed out. This policy turns depth into a **per-layer cap on the pruned fraction** that the
global projection (:func:`~yolo_prune.prune.projections.project_global`) must respect:

* The backbone (feature extraction) is the targets from the shallowest up to and including the
  *backbone end*. Across it the cap rises from ``first_cap`` (the shallowest target) to
  ``last_cap`` (the backbone end): ``cap = first + (last - first) * t ** curve`` with
  ``t = (depth - depth_first) / (depth_end - depth_first)``.
* Targets deeper than the backbone end (neck, head, classifier) get ``last_cap``.
* ``overrides`` (``fnmatch`` pattern -> cap) set a cap by name, after the rule above.

Depth comes from ``model.prune_depth(name)`` when the model defines it (Darknet: the cfg layer
index), else from the target's position in registration order (see
:mod:`yolo_prune.prune.targets`). The backbone end is named by ``backbone_end``: an ``int`` is a
depth in those units (for a Darknet model, a cfg layer index, e.g. 104 for yolov4's
CSPDarknet53); a ``str`` is a parameter-name prefix or pattern, and the deepest target it matches
ends the backbone (``layers.104`` matches ``layers.104.conv.weight``, not ``layers.1040``);
``None`` means every target belongs to the backbone.

The global ratio stays exact: caps only decide *where* the ``round(r * N)`` pruned weights come
from. If the caps cannot hold that many, the projection raises ``PruneError``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from yolo_prune.errors import PruneError


@dataclass(frozen=True)
class ConservativePolicy:
    """Per-layer caps on the pruned fraction that rise with depth (see the module docstring)."""

    first_cap: float = 0.8  # most of the shallowest target's weights that may be pruned
    last_cap: float = 1.0  # cap at the backbone end and for every deeper target
    backbone_end: int | str | None = None  # depth, or name prefix/pattern; None: all targets
    curve: float = 1.0  # exponent of the rise (1: linear; >1: stays low longer)
    overrides: tuple[tuple[str, float], ...] = ()  # (pattern, cap) pairs applied last

    def __post_init__(self) -> None:
        if isinstance(self.overrides, Mapping):
            object.__setattr__(self, "overrides", tuple(self.overrides.items()))
        else:
            object.__setattr__(self, "overrides", tuple(tuple(p) for p in self.overrides))
        for what, v in (("first_cap", self.first_cap), ("last_cap", self.last_cap)):
            if not 0.0 <= float(v) <= 1.0:
                raise PruneError(f"policy.{what}={v} is outside [0, 1]")
        if self.curve <= 0:
            raise PruneError(f"policy.curve={self.curve} must be > 0")
        for pair in self.overrides:
            if len(pair) != 2 or not 0.0 <= float(pair[1]) <= 1.0:
                raise PruneError(
                    f"policy.overrides entry {pair!r}: expected (pattern, cap in [0, 1])"
                )

    def caps(self, names: Sequence[str], depths: Mapping[str, int]) -> dict[str, float]:
        """``name -> cap`` for the targets ``names`` (depth order) with their ``depths``.

        Raises:
            PruneError: ``backbone_end`` or an override pattern matches no target.
        """
        if not names:
            return {}
        d0 = min(depths[n] for n in names)
        end = self._end_depth(names, depths)
        caps = {}
        for n in names:
            d = depths[n]
            if d > end:
                caps[n] = float(self.last_cap)
            else:
                t = 1.0 if end == d0 else (d - d0) / (end - d0)
                caps[n] = self.first_cap + (self.last_cap - self.first_cap) * t**self.curve
        for pattern, cap in self.overrides:
            hit = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hit:
                raise PruneError(f"policy.overrides pattern {pattern!r} matches no target")
            for n in hit:
                caps[n] = float(cap)
        return caps

    def _end_depth(self, names: Sequence[str], depths: Mapping[str, int]) -> int:
        end = self.backbone_end
        if end is None:
            return max(depths[n] for n in names)
        if isinstance(end, bool) or not isinstance(end, (int, str)):
            raise PruneError(f"policy.backbone_end={end!r}; expected a depth (int) or a name")
        if isinstance(end, int):
            return end
        hit = [
            n
            for n in names
            if n == end or n.startswith(end.rstrip(".") + ".") or fnmatch.fnmatchcase(n, end)
        ]
        if not hit:
            raise PruneError(
                f"policy.backbone_end {end!r} matches no target; give a parameter-name prefix "
                f"such as {names[0].rsplit('.', 1)[0]!r} or a depth index"
            )
        return max(depths[n] for n in hit)
