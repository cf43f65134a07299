"""Residual branches that can be removed whole: depth pruning of a Darknet network.

A ``[shortcut]`` adds a *branch* (the layers between its ``from`` layer, the *trunk*, and
itself) to the trunk. Where nothing else reads the branch, removing it and the shortcut leaves
the trunk passing straight on: a shallower network whose later layers read the trunk instead.
On Yolo-Fastest (18 such blocks: a 1x1 expansion, a 3x3 depthwise conv, a linear 1x1
projection) one block costs 1.7-6.2% of the FLOPs, and several cost a point of AP50 or less
when left out, where halving a yolov3-tiny layer of the same share costs 8-14
(docs/structured_tuning.md, sections 10 and 13).

In the *masked* network (the same layers, during fine-tuning) a removed branch outputs exactly
zero: its convolutions' filters are zero (the pruning masks) and :func:`silence_` sets the
last one's batch-norm scale and shift (or bias) to zero and freezes them, so training and
evaluation both see the trunk alone, and every export of the masked network is right as it is.
:func:`drop_blocks` then builds the shallower network, every later ``layers=`` / ``from=``
reference renumbered (one that named a removed shortcut now names its trunk).

Which branches qualify (:func:`find_residual_blocks`): a ``[shortcut]`` with no weights, a
linear activation and one ``from`` layer; a branch of convolutional and dropout layers in a
chain, none read from outside; the trunk of the shortcut's shape; a last convolution whose
activation is zero at zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from yolo_prune.darknet.graph import NetGraph
from yolo_prune.darknet.layers import build_activation
from yolo_prune.errors import PruneError

# The functions below take a ``Darknet`` (yolo_prune.darknet.model), typed as ``nn.Module``:
# the model's own methods call them, so this module does not import it.

BRANCH_KINDS = ("convolutional", "dropout")  # what a removable branch may contain


@dataclass(frozen=True)
class ResidualBlock:
    """A removable residual branch: layers ``trunk + 1 .. shortcut - 1`` and the shortcut."""

    trunk: int  # the layer the shortcut adds the branch to (kept)
    shortcut: int  # the [shortcut] layer (removed with the branch)
    convs: tuple[int, ...]  # the branch's convolutional layers, in order
    output: int  # the last of them: what the branch adds to the trunk (through dropout only)
    bflops: float  # billions of operations per image the branch and the shortcut cost

    @property
    def layers(self) -> range:
        """Every layer removed with the block, the shortcut included."""
        return range(self.trunk + 1, self.shortcut + 1)


def _zero_at_zero(activation: str) -> bool:
    with torch.no_grad():
        return float(build_activation(activation)(torch.zeros(1))[0]) == 0.0


def find_residual_blocks(graph: NetGraph) -> list[ResidualBlock]:
    """The removable residual branches of ``graph``, in layer order (see the module doc)."""
    layers = graph.layers
    readers: dict[int, set[int]] = {}
    for spec in layers:
        for s in spec.sources:
            readers.setdefault(s, set()).add(spec.index)
    blocks = []
    for spec in layers:
        sec = spec.section
        if spec.kind != "shortcut" or sec["weights_type"] != "none":
            continue
        if sec["activation"] != "linear" or len(spec.sources) != 2:
            continue
        last, trunk = spec.sources
        if last != spec.index - 1 or trunk >= last:
            continue
        branch = range(trunk + 1, spec.index)
        if any(layers[i].kind not in BRANCH_KINDS for i in branch):
            continue
        if any(layers[i].sources != [i - 1] for i in branch):
            continue
        outside = {r for i in branch for r in readers.get(i, ())} - set(branch) - {spec.index}
        if outside or readers.get(last, set()) != {spec.index}:
            continue
        if layers[trunk].out_shape != spec.out_shape:
            continue
        convs = tuple(i for i in branch if layers[i].kind == "convolutional")
        if not convs or not _zero_at_zero(layers[convs[-1]].section["activation"]):
            continue
        bflops = sum(layers[i].bflops for i in range(trunk + 1, spec.index + 1))
        blocks.append(ResidualBlock(trunk, spec.index, convs, convs[-1], bflops))
    return blocks


@torch.no_grad()
def silence_(model: nn.Module, blocks: list[ResidualBlock]) -> None:
    """Make each block's branch output exactly zero for good, in place: its last convolution's
    batch-norm scale and shift (or its bias) zeroed and frozen (its filters are already zero)."""
    for block in blocks:
        layer = model.layers[block.output]
        if layer.bn is not None:
            layer.bn.running_mean.zero_()
            layer.bn.running_var.fill_(1.0)
            frozen = (layer.bn.weight, layer.bn.bias)
        else:
            frozen = (layer.conv.bias,)
        for p in frozen:
            p.zero_()
            p.requires_grad_(False)


def drop_blocks(model: nn.Module, blocks: list[ResidualBlock]) -> nn.Module:
    """A new Darknet without the ``blocks`` (weights copied), computing what ``model`` computes
    when their branches output zero.

    Raises:
        PruneError: a block that is not one of ``model``'s removable branches.
    """
    known = set(find_residual_blocks(model.graph))
    unknown = [b.shortcut for b in blocks if b not in known]
    if unknown:
        raise PruneError(f"layer {unknown[0]} is not a removable residual block of this model")
    gone: dict[int, int] = {}  # removed layer -> the trunk it passes on (shortcuts only)
    removed: set[int] = set()
    for b in blocks:
        removed.update(b.layers)
        gone[b.shortcut] = b.trunk
    kept = [i for i in range(len(model.layers)) if i not in removed]
    new_index = {old: new for new, old in enumerate(kept)}

    def target(old: int) -> int:
        while old in gone:  # a removed shortcut passes its trunk on (itself maybe removed)
            old = gone[old]
        return new_index[old]

    sections = [copy.deepcopy(model.sections[0])]
    for old in kept:
        sec = copy.deepcopy(model.sections[old + 1])
        for key in ("layers", "from"):
            if key not in sec.options:
                continue
            refs = []
            for ref in sec[key]:
                new = target(old + ref if ref < 0 else ref)
                refs.append(new - new_index[old] if ref < 0 else new)
            sec.set(key, refs)
        sections.append(sec)
    small = type(model)(sections, size=model.input_shape[1:])
    small.header = model.header
    for old in kept:
        small.layers[new_index[old]].load_state_dict(model.layers[old].state_dict())
    return small.train(model.training)
