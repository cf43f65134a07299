"""``Darknet``: an ``nn.Module`` built from a Darknet cfg."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from yolo_prune.darknet.cfg import Section, format_cfg, load_cfg, parse_cfg
from yolo_prune.darknet.graph import NetGraph, build_graph
from yolo_prune.darknet.layers import YoloLayer, build_layer
from yolo_prune.errors import ConfigError


class Darknet(nn.Module):
    """A Darknet network (detector or classifier) as a PyTorch module.

    Build one with :meth:`from_cfg`. ``model.layers[i]`` is Darknet's layer ``i``; parameter
    names are ``layers.<i>.conv.weight``, ``layers.<i>.bn.weight``, ``layers.<i>.fc.weight``.

    Forward, eval mode: ``x`` float ``[B, C, H, W]`` (RGB in [0, 1] for the YOLO family) ->
    for a detector, ``[B, N, 5 + classes]`` (centre x, centre y, width, height in input pixels,
    objectness, class probabilities) concatenated over the ``[yolo]`` layers; for a classifier,
    the last layer's output flattened to ``[B, K]``. Training mode: a detector returns the list
    of raw ``[B, A, H, W, 5 + classes]`` head tensors, one per ``[yolo]`` layer; a classifier
    returns logits (``[softmax]`` passes them through).
    """

    def __init__(self, sections: list[Section], *, size: int | tuple[int, int] | None = None):
        super().__init__()
        self.sections = sections
        self.graph: NetGraph = build_graph(sections, size=size)
        hw = self.graph.input_shape[1:]
        self.layers = nn.ModuleList(build_layer(spec, hw) for spec in self.graph.layers)
        self.sources = [spec.sources for spec in self.graph.layers]
        # Which outputs must be kept while running forward: those read by a later layer other
        # than through the implicit "previous layer" path.
        keep = set()
        for i, srcs in enumerate(self.sources):
            keep.update(s for s in srcs if s != i - 1)
        self._keep = keep
        self.yolo_indices = [i for i, m in enumerate(self.layers) if isinstance(m, YoloLayer)]
        # Darknet .weights header (major, minor, revision, seen); replaced by load_weights.
        self.header = (0, 2, 5, 0)
        self.fused = False  # set by fuse_(); a fused model no longer has Darknet's layout
        self._channel_map = None  # built on first use by channel_map()

    @classmethod
    def from_cfg(cls, path: str | Path, *, size: int | tuple[int, int] | None = None) -> Darknet:
        """Build the network a cfg file describes (``size`` overrides its input size)."""
        return cls(load_cfg(path), size=size)

    @classmethod
    def from_cfg_text(cls, text: str, *, size: int | tuple[int, int] | None = None) -> Darknet:
        return cls(parse_cfg(text), size=size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) the model was built for."""
        return self.graph.input_shape

    @property
    def is_detector(self) -> bool:
        return bool(self.yolo_indices)

    @property
    def num_classes(self) -> int:
        """Classes a detector predicts (its ``[yolo]`` layers' ``classes=``), or a classifier's
        outputs."""
        if self.yolo_indices:
            return int(self.layers[self.yolo_indices[0]].classes)
        return int(self.graph.layers[-1].out_shape[0])

    @property
    def letter_box(self) -> bool:
        """The cfg's ``letter_box``: images are fitted into the input keeping their aspect."""
        return bool(self.sections[0].get("letter_box", 0))

    def cfg_text(self) -> str:
        return format_cfg(self.sections)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if tuple(x.shape[-2:]) != self.input_shape[1:]:
            self._check_input_size(x.shape[-2], x.shape[-1])
        saved: dict[int, torch.Tensor] = {}
        heads: list[torch.Tensor] = []
        prev = x
        for i, (layer, srcs) in enumerate(zip(self.layers, self.sources, strict=True)):
            inputs = [prev if s == i - 1 else saved[s] for s in srcs] if srcs else [x]
            out = layer(inputs)
            if i in self._keep:
                saved[i] = out
            if isinstance(layer, YoloLayer):
                heads.append(out)
                # No layer of the family reads a [yolo] output; keep the head's input as the
                # layer's output so the channel bookkeeping of any later reference holds.
                out = inputs[0]
                if i in self._keep:
                    saved[i] = out
            prev = out
        if heads:
            return heads if self.training else torch.cat(heads, dim=1)
        return prev.flatten(1)

    def at_size(self, size: int) -> Darknet:
        """The same detector, the same weights, built for a ``size`` x ``size`` input (a multiple
        of its largest stride): its FLOPs and exports are those of that input.

        Raises:
            ConfigError: a classifier (its layers are sized for its input), or a size that is
                not a multiple of the stride.
        """
        self._check_input_size(size, size)
        twin = Darknet(copy.deepcopy(self.sections), size=size)
        twin.load_state_dict(self.state_dict())
        twin.header = self.header
        return twin.train(self.training)

    def _check_input_size(self, height: int, width: int) -> None:
        """A detector runs at any multiple of its largest stride; other inputs are refused."""
        step = self.graph.max_stride
        if not self.is_detector or height % step or width % step or min(height, width) < step:
            _, h, w = self.input_shape
            examples = ", ".join(str(step * k) for k in (10, 13, 19))
            valid = (
                f"multiples of {step} pixels (e.g. {examples})"
                if self.is_detector
                else f"{w}x{h} only (a classifier's layers are sized for its input)"
            )
            raise ConfigError(f"input {width}x{height}: this network runs at {valid}")

    def fuse_(self) -> Darknet:
        """Fold every batch norm into the convolution or connected layer before it, in place.

        For inference only: the fused model computes the same outputs (to float rounding) with
        one op less per layer, but it has no BN statistics left to train or to save as
        ``.weights`` (saving a fused model raises).
        """
        with torch.no_grad():
            for layer in self.layers:
                bn = getattr(layer, "bn", None)
                lin = getattr(layer, "conv", None) or getattr(layer, "fc", None)
                if bn is None or lin is None:
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                shape = (-1,) + (1,) * (lin.weight.dim() - 1)
                fused = nn.Parameter(lin.weight * scale.view(shape))
                bias = bn.bias - bn.running_mean * scale
                if lin.bias is not None:
                    bias = bias + lin.bias * scale
                lin.weight = fused
                lin.bias = nn.Parameter(bias)
                layer.bn = None
        self.fused = True
        return self

    # --- weights io -------------------------------------------------------------------------

    def load_weights(self, path: str | Path) -> None:
        """Fill the model from a Darknet ``.weights`` file (header kept for saving)."""
        from yolo_prune.darknet.weights import load_darknet_weights

        load_darknet_weights(self, path)

    def save_weights(self, path: str | Path) -> None:
        """Write the model as a Darknet ``.weights`` file, atomically."""
        from yolo_prune.darknet.weights import save_darknet_weights

        save_darknet_weights(self, path)

    # --- what the pruning engine may ask (optional protocol; see yolo_prune.prune.targets) ----

    def prune_depth(self, name: str) -> int:
        """The cfg layer index owning parameter ``name`` (``layers.12.conv.weight`` -> 12)."""
        parts = name.split(".")
        if len(parts) < 2 or parts[0] != "layers" or not parts[1].isdigit():
            raise KeyError(f"{name!r} is not a parameter of a Darknet layer")
        return int(parts[1])

    def channel_groups(self) -> list[list[tuple[str, int]]]:
        """Output channels that must be pruned together, one list per prunable group.

        Each entry is (weight parameter name, output channel): the filters (conv) or rows
        (connected) producing the group's channels. Groups that cannot be removed (feeding a
        ``[yolo]`` layer, the network output, grouped convolutions, ...) are left out; see
        :mod:`yolo_prune.darknet.channels`.
        """
        cmap = self.channel_map()
        return [
            [(self._weight_name(layer), ch) for layer, ch in grp.producers]
            for grp in cmap.groups
            if grp.prunable
        ]

    def protected_channels(self) -> dict[str, str]:
        """Weights none of whose filters may be pruned structurally, with the reason.

        ``{"layers.29.conv.weight": "it feeds the [yolo] layer 30", ...}``: every output
        channel of that layer is in a protected group (see :mod:`yolo_prune.darknet.channels`).
        """
        cmap = self.channel_map()
        out = {}
        for spec in self.graph.layers:
            if spec.kind not in ("convolutional", "connected"):
                continue
            ids = cmap.outputs[spec.index]
            if ids and all(g >= 0 and not cmap.groups[g].prunable for g in ids):
                out[self._weight_name(spec.index)] = cmap.groups[ids[0]].protected
        return out

    def channel_flops(self) -> dict[str, torch.Tensor]:
        """GFLOPs per image that go with each output channel of each conv/connected weight:
        ``{weight name: [out]}``. A prunable group's cost is its producing filters' share of
        their layers plus its share of the layers reading it, split evenly over its producers
        (so a group's members sum to what removing it saves); protected channels cost 0."""
        cmap = self.channel_map()
        layers = self.graph.layers
        out = {
            self._weight_name(spec.index): torch.zeros(spec.out_shape[0])
            for spec in layers
            if spec.kind in ("convolutional", "connected")
        }
        for grp in cmap.groups:
            if not grp.prunable or not grp.producers:
                continue
            cost = sum(layers[i].bflops / layers[i].out_shape[0] for i, _ in grp.producers)
            cost += sum(layers[i].bflops / layers[i].in_shape[0] for i, _ in grp.readers)
            for i, ch in grp.producers:
                out[self._weight_name(i)][ch] = cost / len(grp.producers)
        return out

    def output_scale_name(self, weight_name: str) -> str | None:
        """The batch-norm scale (gamma) applied to the outputs of ``weight_name``, if any."""
        layer = self.layers[self.prune_depth(weight_name)]
        if getattr(layer, "bn", None) is None:
            return None
        return weight_name.rsplit(".", 2)[0] + ".bn.weight"

    def channel_output(self, weight_name: str) -> nn.Module:
        """The layer whose output carries the channels of ``weight_name``: the whole Darknet
        layer (after batch norm and activation), what the layers reading it see."""
        return self.layers[self.prune_depth(weight_name)]

    def channel_map(self):
        """The channel dependency map of this network (cached)."""
        from yolo_prune.darknet.channels import build_channel_map

        if self._channel_map is None:
            self._channel_map = build_channel_map(self.graph)
        return self._channel_map

    def residual_blocks(self) -> list[dict]:
        """Residual branches that can be removed whole (depth pruning), in layer order: per
        block, ``weights`` (its convolutions' weight names; all zero = the block is removed),
        ``output`` (the weight of the convolution whose output the branch adds) and ``gflops``
        (what removing it saves). See :mod:`yolo_prune.darknet.blocks`."""
        from yolo_prune.darknet.blocks import find_residual_blocks

        return [
            {
                "weights": [self._weight_name(i) for i in b.convs],
                "output": self._weight_name(b.output),
                "gflops": b.bflops,
            }  # fmt: skip
            for b in find_residual_blocks(self.graph)
        ]

    def gflops(self) -> float:
        """Billions of operations per image at the default input size (:attr:`input_shape`)."""
        return float(sum(spec.bflops for spec in self.graph.layers))

    def dropped_blocks(self) -> list:
        """The removable residual blocks whose convolutions' filters are all exactly zero."""
        from yolo_prune.darknet.blocks import find_residual_blocks

        return [
            b
            for b in find_residual_blocks(self.graph)
            if not any(bool(self._weight(i).any()) for i in b.convs)
        ]

    def zero_channel_groups(self) -> set[int]:
        """Ids of the prunable channel groups whose producing filters are all exactly zero
        (those inside a dropped residual block excepted: the block goes whole)."""
        inside = {i for b in self.dropped_blocks() for i in b.layers}
        groups = set()
        for grp in self.channel_map().groups:
            if not grp.prunable or all(layer in inside for layer, _ in grp.producers):
                continue
            if all(not bool(self._weight(layer)[ch].any()) for layer, ch in grp.producers):
                groups.add(grp.id)
        return groups

    def fold_zero_channels_(self) -> set[int]:
        """Make the channel groups whose filters are all zero output exactly zero, in place,
        their constant outputs folded into the layers reading them
        (:func:`~yolo_prune.darknet.surgery.fold_pruned_`); returns those group ids.

        Call it after a hard structured cut and before fine-tuning: a zero filter's batch-norm
        otherwise emits its shift in training mode (batch mean 0) but the shift minus
        gamma * running mean / std in eval mode, so training and evaluation see two different
        networks and the running mean drifts between them.
        """
        from yolo_prune.darknet.blocks import silence_
        from yolo_prune.darknet.surgery import fold_pruned_

        groups = self.zero_channel_groups()
        if groups:
            fold_pruned_(self, groups, self.channel_map())
        silence_(self, self.dropped_blocks())
        return groups

    def refit_pruned_(self, dense: Darknet, images: torch.Tensor) -> bool:
        """Refit this model's kept weights to ``dense`` (the model before pruning) by least
        squares on calibration ``images``, in place; False (a no-op) where nothing was cut whole.

        For a model whose pruned channel groups or residual blocks are zero (after a hard
        structured cut; the layers of a dropped block stay zero): fold
        them (:meth:`fold_zero_channels_`), shrink, refit layer by layer
        (:func:`~yolo_prune.darknet.reconstruct.reconstruct_`), and copy the refitted weights
        back (:func:`~yolo_prune.darknet.surgery.expand_into_`), so that masked fine-tuning
        starts from the refit rather than from the raw cut.
        """
        from yolo_prune.darknet.reconstruct import reconstruct_
        from yolo_prune.darknet.surgery import expand_into_, shrink

        groups = self.fold_zero_channels_()
        dropped = self.dropped_blocks()
        if not groups and not dropped:
            return False
        was_training = self.training
        small = shrink(self, groups).eval()
        device = next(self.parameters()).device
        dead = {i for b in dropped for i in b.layers}
        reconstruct_(small, dense.to(device).eval(), images.to(device), groups, skip=dead)
        expand_into_(self, small, groups)
        self.train(was_training)
        return True

    def _weight_name(self, layer: int) -> str:
        return f"layers.{layer}.{'conv' if hasattr(self.layers[layer], 'conv') else 'fc'}.weight"

    def _weight(self, layer: int) -> torch.Tensor:
        module = self.layers[layer]
        return (module.conv if hasattr(module, "conv") else module.fc).weight

    def prune_ignore(self) -> list[str]:
        """Parameter names that pruning must leave dense.

        For a detector, the layer feeding each ``[yolo]`` (its outputs are box coordinates and
        class scores, fixed by the anchors and classes); for a classifier, the last layer with
        weights (its outputs are the classes).
        """
        if self.yolo_indices:
            owners = {self.sources[i][0] for i in self.yolo_indices}
        else:
            weighted = [i for i, m in enumerate(self.layers) if any(True for _ in m.parameters())]
            owners = {weighted[-1]} if weighted else set()
        return [
            f"layers.{i}.{name}"
            for i in sorted(owners)
            for name, _ in self.layers[i].named_parameters()
        ]
