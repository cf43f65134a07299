"""Channel dependency groups of a Darknet graph: which channels must be removed together.

Every output channel of a ``[convolutional]`` or ``[connected]`` layer is a *producer*
channel. Layers that only move channels around (maxpool, upsample, dropout, avgpool, route)
pass their input channels' identities on; layers that combine channels element-wise tie them:
a ``[shortcut]`` adds channel k of all its inputs, ``[sam]`` and ``[scale_channels]`` multiply
them, a depthwise convolution's output k reads only input k, and a route with ``groups=G`` cuts
its sources into G equal chunks (so channel j of every chunk is tied, keeping the chunks
equal). Tied channels form one group, found with union-find; removing a group removes every
producer channel in it and the matching input slice of every layer that reads them.

Some groups cannot be removed: the network input, the channels feeding a ``[yolo]`` layer or a
classifier's output, the channels of a grouped (not depthwise) convolution, and channels whose
layer's activation is not zero at zero (logistic), which the masked model could not zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yolo_prune.darknet.graph import NetGraph

# activations f with f(0) == 0: a pruned channel of such a layer can be made exactly zero
_ZERO_AT_ZERO = {"linear", "leaky", "relu", "relu6", "mish", "hard_mish", "swish", "tanh", "elu",
                 "selu", "gelu", "hardtan"}  # fmt: skip


@dataclass
class ChannelGroup:
    """Channels that are removed together."""

    id: int  # index in the list returned by :func:`channel_groups`
    producers: list[tuple[int, int]]  # (layer index, output channel) of conv/connected layers
    readers: list[tuple[int, int]] = field(default_factory=list)  # (layer, input channel) of
    # conv/connected layers that read a channel of this group and are not producers of it
    protected: str | None = None  # why the group cannot be pruned, or None

    @property
    def prunable(self) -> bool:
        return self.protected is None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class ChannelMap:
    """Per layer, the group of each input and output channel (-1: in no group, e.g. the
    network input's channels); plus the groups themselves."""

    inputs: list[list[int]]  # conv/connected layers: group id of each input channel, else []
    outputs: list[list[int]]  # every layer: group id of each output channel
    groups: list[ChannelGroup]

    def kept(self, ids: list[int], pruned: set[int]) -> list[int]:
        """Positions in ``ids`` (a layer's channel groups) whose group is not pruned."""
        return [k for k, g in enumerate(ids) if g not in pruned]


def build_channel_map(graph: NetGraph) -> ChannelMap:
    """Trace every channel through ``graph`` and group the tied ones."""
    uf = _UnionFind()
    protected: dict[int, str] = {}  # node -> reason
    net_in = uf.new(graph.input_shape[0])
    for n in net_in:
        protected[n] = "it is the network input"
    outs: list[list[int]] = []
    ins: list[list[int]] = []
    producers: list[tuple[int, int, int]] = []  # (node, layer, channel)
    for layer in graph.layers:
        src = [outs[s] for s in layer.sources] if layer.sources else [net_in]
        prev = src[0]
        kind, sec = layer.kind, layer.section
        layer_in: list[int] = []
        if kind in ("convolutional", "connected"):
            layer_in = list(prev)
            n_out = layer.out_shape[0]
            out = uf.new(n_out)
            producers.extend((node, layer.index, k) for k, node in enumerate(out))
            groups = layer.extra.get("groups", 1) if kind == "convolutional" else 1
            if groups > 1 and groups == len(prev) == n_out:  # depthwise: out k reads in k only
                for a, b in zip(prev, out, strict=True):
                    uf.union(a, b)
            elif groups > 1:
                for n in (*prev, *out):
                    protected[n] = f"layer {layer.index} is a grouped convolution (groups={groups})"
            if sec["activation"] not in _ZERO_AT_ZERO:
                for n in out:
                    protected.setdefault(n, f"layer {layer.index}'s activation "
                                            f"{sec['activation']} is not zero at zero")  # fmt: skip
        elif kind == "route":
            g, gid = sec["groups"], sec["group_id"]
            out = []
            for ids in src:
                size = len(ids) // g
                chunks = [ids[i * size : (i + 1) * size] for i in range(g)]
                for chunk in chunks[1:]:
                    for a, b in zip(chunks[0], chunk, strict=True):
                        uf.union(a, b)
                out.extend(chunks[gid])
        elif kind in ("shortcut", "sam"):
            for ref, other in zip(layer.sources[1:], src[1:], strict=True):
                for a, b in zip(prev, other, strict=False):  # the common channels, as Darknet
                    uf.union(a, b)
                if len(other) != len(prev):  # unequal widths: keep both widths as they are
                    why = (
                        f"the channel groups of layer {layer.index} [{kind}] cannot be resolved: "
                        f"it adds layer {ref} ({len(other)} channels) to layer "
                        f"{layer.sources[0]} ({len(prev)} channels), so their channels do not "
                        "pair up one to one"
                    )
                    for n in (*prev, *other):
                        protected.setdefault(n, why)
            out = list(prev)
            if sec["activation"] not in _ZERO_AT_ZERO:
                for n in out:
                    protected.setdefault(n, f"layer {layer.index}'s activation is not zero at zero")
        elif kind == "scale_channels":
            scale, feat = src[0], src[1]
            if not sec["scale_wh"]:
                for a, b in zip(scale, feat, strict=True):
                    uf.union(a, b)
            out = list(feat)
        elif kind == "yolo":
            for n in prev:
                protected[n] = f"it feeds the [yolo] layer {layer.index}"
            out = list(prev)
        elif kind == "softmax":
            for n in prev:
                protected[n] = f"it is the classifier output (layer {layer.index})"
            out = list(prev)
        else:  # maxpool, upsample, dropout, avgpool: channels pass through
            out = list(prev)
        outs.append(out)
        ins.append(layer_in)
    # the last layer's outputs are the network's outputs
    for n in outs[-1]:
        protected.setdefault(n, "it is the network output")

    roots: dict[int, ChannelGroup] = {}
    for node, layer_idx, ch in producers:
        root = uf.find(node)
        if root not in roots:
            roots[root] = ChannelGroup(id=len(roots), producers=[])
        roots[root].producers.append((layer_idx, ch))
    for node, reason in protected.items():
        grp = roots.get(uf.find(node))
        if grp is not None and grp.protected is None:
            grp.protected = reason
    produced = {(layer_idx, ch) for _, layer_idx, ch in producers}
    for layer in graph.layers:
        for k, node in enumerate(ins[layer.index]):
            grp = roots.get(uf.find(node))
            if grp is None:
                continue
            tied_out = layer.kind == "convolutional" and (layer.index, k) in produced and \
                uf.find(outs[layer.index][k]) == uf.find(node)  # fmt: skip
            if not tied_out:
                grp.readers.append((layer.index, k))
    groups = sorted(roots.values(), key=lambda g: g.id)

    def gid(node: int) -> int:
        grp = roots.get(uf.find(node))
        return -1 if grp is None else grp.id

    return ChannelMap(
        inputs=[[gid(n) for n in layer_in] for layer_in in ins],
        outputs=[[gid(n) for n in out] for out in outs],
        groups=groups,
    )
