"""Physically remove channel groups from a Darknet model.

Two steps, both fed with the set of pruned group ids (chosen by the pruning engine, found by
:func:`~yolo_prune.darknet.channels.build_channel_map`):

1. :func:`fold_pruned_` turns the model into the *masked* model: every pruned channel outputs
   exactly zero. A pruned filter whose weights are zero still emits a constant (its BN shift or
   bias through the activation); that constant is folded into the layers reading it (their
   bias, or their BN running mean) before the channel is zeroed, so the rest of the network
   sees the same values. The fold is exact for 1x1 readers and in the interior of larger
   kernels; where a k x k reader's window overlaps zero padding, the original saw zeros there
   and the fold assumes the constant, a border effect that is part of what pruning changes.
2. :func:`shrink` builds the smaller network without those channels (new ``filters=`` and
   sliced tensors). The shrunk model computes exactly what the masked model computes.
"""

from __future__ import annotations

import copy

import torch

from yolo_prune.darknet.channels import ChannelMap, build_channel_map
from yolo_prune.darknet.model import Darknet
from yolo_prune.errors import PruneError


def check_prunable(cmap: ChannelMap, pruned: set[int]) -> None:
    """Raise :class:`PruneError` naming the reason if a pruned group is protected."""
    for gid in sorted(pruned):
        if not 0 <= gid < len(cmap.groups):
            raise PruneError(f"channel group {gid} does not exist (0..{len(cmap.groups) - 1})")
        grp = cmap.groups[gid]
        if grp.protected:
            layer, ch = grp.producers[0]
            raise PruneError(f"channel {ch} of layer {layer} cannot be pruned: {grp.protected}")


def _linear(layer: torch.nn.Module) -> torch.nn.Module:
    return getattr(layer, "conv", None) or layer.fc


@torch.no_grad()
def fold_pruned_(model: Darknet, pruned: set[int], cmap: ChannelMap | None = None) -> Darknet:
    """Make every channel of the ``pruned`` groups output zero, in place (see module doc)."""
    cmap = cmap or build_channel_map(model.graph)
    check_prunable(cmap, pruned)
    # 1. zero the pruned filters, then measure the constant each pruned channel now emits
    for gid in pruned:
        for layer_idx, ch in cmap.groups[gid].producers:
            layer = model.layers[layer_idx]
            _linear(layer).weight[ch].zero_()
            if layer.bn is not None:
                # A zero filter outputs 0 on every input, so its batch mean is 0; the running
                # mean learnt for the live filter would shift the constant by -gamma*mean/std.
                # With mean 0 the channel emits act(beta), what a BN update would settle on
                # (and what network slimming keeps when it drops a small-gamma channel).
                layer.bn.running_mean[ch] = 0.0
    values: dict[int, torch.Tensor] = {}

    def keep(i: int, out: torch.Tensor) -> None:
        if out.dim() == 4:  # [yolo] layers return decoded rows; nothing reads them
            values[i] = out[0, :, 0, 0]

    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, i=i: keep(i, out))
        for i, layer in enumerate(model.layers)
    ]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((1, *model.input_shape)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # 2. fold each constant into the layers that read it, and cut those input weights
    for gid in pruned:
        for layer_idx, k in cmap.groups[gid].readers:
            spec = model.graph.layers[layer_idx]
            src = spec.sources[0]
            const = values[src][k]
            layer = model.layers[layer_idx]
            lin = _linear(layer)
            if spec.kind == "convolutional":
                cols = lin.weight[:, k]
                shift = const * cols.sum(dim=(1, 2))
            else:  # connected: channel k is a block of h*w flattened inputs
                _, h, w = spec.in_shape
                cols = lin.weight[:, k * h * w : (k + 1) * h * w]
                shift = const * cols.sum(dim=1)
            if layer.bn is not None:
                layer.bn.running_mean -= shift
            else:
                lin.bias += shift
            cols.zero_()
    # 3. make the pruned channels exactly zero (every protected activation is zero at zero)
    for gid in pruned:
        for layer_idx, ch in cmap.groups[gid].producers:
            layer = model.layers[layer_idx]
            if layer.bn is not None:
                layer.bn.weight[ch] = 0.0
                layer.bn.bias[ch] = 0.0
                layer.bn.running_mean[ch] = 0.0
                layer.bn.running_var[ch] = 1.0
            else:
                _linear(layer).bias[ch] = 0.0
    return model


@torch.no_grad()
def shrink(model: Darknet, pruned: set[int], cmap: ChannelMap | None = None) -> Darknet:
    """A new, smaller Darknet without the ``pruned`` channel groups (weights copied)."""
    cmap = cmap or build_channel_map(model.graph)
    check_prunable(cmap, pruned)
    sections = copy.deepcopy(model.sections)
    keep_out = [cmap.kept(ids, pruned) for ids in cmap.outputs]
    keep_in = [cmap.kept(ids, pruned) for ids in cmap.inputs]
    for spec in model.graph.layers:
        sec = sections[spec.index + 1]
        if spec.kind == "convolutional":
            n = len(keep_out[spec.index])
            if n == 0:
                raise PruneError(f"pruning would remove every filter of layer {spec.index}")
            depthwise = spec.extra["groups"] > 1 and spec.extra["groups"] == spec.in_shape[0]
            sec.set("filters", n)
            if depthwise:
                sec.set("groups", n)
        elif spec.kind == "connected":
            sec.set("output", len(keep_out[spec.index]))
    small = Darknet(sections, size=model.input_shape[1:])
    small.header = model.header
    small.train(model.training)
    for spec, old, new in zip(model.graph.layers, model.layers, small.layers, strict=True):
        out_idx = torch.tensor(keep_out[spec.index], dtype=torch.long)
        if spec.kind in ("convolutional", "connected"):
            lin_old, lin_new = _linear(old), _linear(new)
            w = lin_old.weight[out_idx]
            if spec.kind == "convolutional":
                if lin_new.groups == 1:
                    w = w[:, torch.tensor(keep_in[spec.index], dtype=torch.long)]
            else:
                _, h, wd = spec.in_shape
                hw = h * wd
                cols = torch.tensor([c * hw + j for c in keep_in[spec.index] for j in range(hw)])
                w = w[:, cols]
            lin_new.weight.copy_(w)
            if lin_old.bias is not None:
                lin_new.bias.copy_(lin_old.bias[out_idx])
            if old.bn is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new.bn, name).copy_(getattr(old.bn, name)[out_idx])
        elif spec.kind == "shortcut" and old.weight is not None:
            w = old.weight if old.weight.shape[1] == 1 else old.weight[:, out_idx]
            new.weight.copy_(w)
    return small


@torch.no_grad()
def expand_into_(
    model: Darknet, small: Darknet, pruned: set[int], cmap: ChannelMap | None = None
) -> Darknet:
    """The inverse of :func:`shrink`: copy ``small``'s weights back into ``model`` (the same
    network with the ``pruned`` groups folded to zero, :func:`fold_pruned_`) at the kept
    channels, in place. The pruned filters and the weights reading them stay zero, so
    ``model`` computes what ``small`` computes and can go on training with its masks."""
    cmap = cmap or build_channel_map(model.graph)
    check_prunable(cmap, pruned)
    keep_out = [cmap.kept(ids, pruned) for ids in cmap.outputs]
    keep_in = [cmap.kept(ids, pruned) for ids in cmap.inputs]
    for spec, big, new in zip(model.graph.layers, model.layers, small.layers, strict=True):
        out_idx = torch.tensor(keep_out[spec.index], dtype=torch.long)
        if spec.kind == "convolutional":
            lin_big, lin_new = _linear(big), _linear(new)
            if lin_big.groups == 1:
                in_idx = torch.tensor(keep_in[spec.index], dtype=torch.long)
                lin_big.weight[out_idx[:, None], in_idx] = lin_new.weight
            else:
                lin_big.weight[out_idx] = lin_new.weight
            if lin_big.bias is not None:
                lin_big.bias[out_idx] = lin_new.bias
            if big.bn is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(big.bn, name)[out_idx] = getattr(new.bn, name)
        elif spec.kind == "connected":
            _, h, wd = spec.in_shape
            hw = h * wd
            cols = torch.tensor([c * hw + j for c in keep_in[spec.index] for j in range(hw)])
            lin_big, lin_new = _linear(big), _linear(new)
            lin_big.weight[out_idx[:, None], cols] = lin_new.weight
            if lin_big.bias is not None:
                lin_big.bias[out_idx] = lin_new.bias
            if big.bn is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(big.bn, name)[out_idx] = getattr(new.bn, name)
        elif spec.kind == "shortcut" and big.weight is not None:
            if big.weight.shape[1] == 1:
                big.weight.copy_(new.weight)
            else:
                big.weight[:, out_idx] = new.weight
    return model


@torch.no_grad()
def shrink_zeroed(
    model: Darknet,
    *,
    refit_to: Darknet | None = None,
    calibration: torch.Tensor | None = None,
    inplace: bool = False,
) -> Darknet | None:
    """The physically smaller network of a pruned ``model`` (left unchanged unless ``inplace``,
    for a caller's own throw-away copy: it is folded then): its all-zero
    channel groups folded and sliced away (:func:`fold_pruned_`, :func:`shrink`), refitted to
    ``refit_to`` on ``calibration`` images if given
    (:func:`~yolo_prune.darknet.reconstruct.reconstruct_`), then its residual blocks whose
    filters are all zero removed (:func:`~yolo_prune.darknet.blocks.drop_blocks`). None when
    nothing is zero whole."""
    from yolo_prune.darknet.blocks import drop_blocks
    from yolo_prune.darknet.reconstruct import reconstruct_

    probe = model if inplace else copy.deepcopy(model)
    groups = probe.fold_zero_channels_()  # also silences the dropped blocks' branches
    dropped = probe.dropped_blocks()
    if not groups and not dropped:
        return None
    small = shrink(probe, groups) if groups else probe
    small.eval()
    if calibration is not None:
        if refit_to is None:
            raise PruneError("a refit needs the dense model to refit to")
        device = next(small.parameters()).device
        dead = {i for b in dropped for i in b.layers}
        reconstruct_(small, refit_to.to(device).eval(), calibration.to(device), groups,
                     skip=dead)  # fmt: skip
    return drop_blocks(small, dropped) if dropped else small
