"""The network a cfg describes: resolved layer references, shapes, parameters and BFLOPs.

:func:`build_graph` walks the sections after ``[net]`` as Darknet's ``parse_network_cfg`` does,
turning relative references (``layers=-1,61``, ``from=-3``) into absolute layer indices and
computing every layer's output shape for a given input size. It checks what Darknet would
otherwise crash on (a route to a later layer, a shortcut between different shapes, a
``[yolo]`` whose input has the wrong number of channels) and reports file and line. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yolo_prune.darknet.cfg import Section

Shape = tuple[int, int, int]  # (channels, height, width)


@dataclass
class LayerSpec:
    """One layer of the network, with everything needed to build and describe it."""

    index: int  # Darknet's layer index (0 = the section after [net])
    section: Section  # the cfg section it comes from
    sources: list[int]  # absolute indices of the layers it reads (empty = the network input)
    in_shape: Shape  # shape of its first input
    out_shape: Shape  # shape of its output
    params: int = 0  # learnable parameters (conv/fc weights and biases, BN scales and shifts)
    bflops: float = 0.0  # billions of floating-point operations per image, as Darknet counts
    extra: dict = field(default_factory=dict)  # kind-specific derived values (padding, ...)

    @property
    def kind(self) -> str:
        return self.section.kind


@dataclass
class NetGraph:
    """All layers of a cfg plus the ``[net]`` section and the input shape they were sized for."""

    net: Section
    layers: list[LayerSpec]
    input_shape: Shape  # (channels, height, width)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def bflops(self) -> float:
        return sum(layer.bflops for layer in self.layers)

    @property
    def max_stride(self) -> int:
        """Input pixels per cell of the coarsest feature map (32 for the YOLO family): the
        network runs at any input whose sides are multiples of it."""
        _, in_h, in_w = self.input_shape
        ratios = [
            max(in_h // layer.out_shape[1], in_w // layer.out_shape[2])
            for layer in self.layers
            if len(layer.out_shape) == 3 and layer.out_shape[1] > 0 and layer.out_shape[2] > 0
        ]
        return max(ratios, default=1)

    def yolo_layers(self) -> list[LayerSpec]:
        return [layer for layer in self.layers if layer.kind == "yolo"]


def _resolve(sec: Section, key: str, index: int, n_layers: int) -> list[int]:
    refs = sec[key]
    if refs is None:
        raise sec.error(f"[{sec.kind}] needs {key}= (which earlier layers it reads)")
    out = []
    for ref in refs:
        absolute = index + ref if ref < 0 else ref
        if absolute < 0:
            raise sec.error(
                f"[{sec.kind}] {key}={sec.options[key].raw} refers to layer {ref}, which is "
                f"before the first layer (this is layer {index})",
                key,
            )
        if absolute >= index:
            what = "itself" if absolute == index else f"layer {absolute}"
            raise sec.error(
                f"[{sec.kind}] {key}={sec.options[key].raw} refers to {what}, but this is layer "
                f"{index}; a {sec.kind} can only refer to earlier layers",
                key,
            )
        out.append(absolute)
    return out


def _positive(sec: Section, key: str, *, allow_zero: bool = False) -> int:
    value = sec[key]
    if value < 0 or (value == 0 and not allow_zero):
        raise sec.error(f"[{sec.kind}] {key}={value}: must be {'>= 0' if allow_zero else '> 0'}",
                        key)  # fmt: skip
    return value


def build_graph(sections: list[Section], *, size: int | tuple[int, int] | None = None) -> NetGraph:
    """Resolve a parsed cfg into layers with shapes, for an input of ``size`` pixels.

    Args:
        sections: output of :func:`~yolo_prune.darknet.cfg.parse_cfg` (``[net]`` first).
        size: input side (or ``(height, width)``); default the cfg's ``width``/``height``.

    Raises:
        CfgError: naming the file and line of the first layer that cannot be built.
    """
    net = sections[0]
    channels = net["channels"]
    if size is None:
        height, width = net["height"], net["width"]
    elif isinstance(size, int):
        height = width = size
    else:
        height, width = size
    if channels <= 0 or height <= 0 or width <= 0:
        raise net.error(
            f"[net] gives channels={channels}, height={height}, width={width}; all three must "
            "be positive (set them in [net] or pass an input size)"
        )
    input_shape: Shape = (channels, height, width)
    layers: list[LayerSpec] = []
    for index, sec in enumerate(sections[1:]):
        prev = layers[-1].out_shape if layers else input_shape
        layer = _build_layer(sec, index, prev, layers)
        for dim in layer.out_shape:
            if dim <= 0:
                raise sec.error(
                    f"[{sec.kind}] layer {index} would output shape {layer.out_shape} from input "
                    f"{layer.in_shape}; the input is too small for this stride/size"
                )
        layers.append(layer)
    if not layers:
        raise net.error("the cfg has [net] but no layers")
    return NetGraph(net=net, layers=layers, input_shape=input_shape)


def _build_layer(sec: Section, index: int, prev: Shape, layers: list[LayerSpec]) -> LayerSpec:
    c, h, w = prev
    sources = [index - 1] if index > 0 else []
    kind = sec.kind
    spec = LayerSpec(index=index, section=sec, sources=sources, in_shape=prev, out_shape=prev)

    if kind == "convolutional":
        filters = _positive(sec, "filters")
        size = _positive(sec, "size")
        stride = _positive(sec, "stride")
        sy = sec["stride_y"] if sec["stride_y"] > 0 else stride
        sx = sec["stride_x"] if sec["stride_x"] > 0 else stride
        groups = _positive(sec, "groups")
        dilation = _positive(sec, "dilation")
        pad = size // 2 if sec["pad"] else _positive(sec, "padding", allow_zero=True)
        for key in ("antialiasing", "binary", "xnor", "deform", "sway", "rotate", "stretch",
                    "stretch_sway", "coordconv"):  # fmt: skip
            if sec[key]:
                raise sec.error(f"[convolutional] {key}={sec[key]} is not supported", key)
        if sec["share_index"] != -1000000000:
            raise sec.error("[convolutional] share_index is not supported", "share_index")
        if c % groups or filters % groups:
            raise sec.error(
                f"[convolutional] groups={groups} must divide both the input channels ({c}) and "
                f"filters ({filters})",
                "groups",
            )
        out_h = (h + 2 * pad - dilation * (size - 1) - 1) // sy + 1
        out_w = (w + 2 * pad - dilation * (size - 1) - 1) // sx + 1
        n_weights = filters * (c // groups) * size * size
        spec.out_shape = (filters, out_h, out_w)
        spec.params = n_weights + (2 * filters if sec["batch_normalize"] else filters)
        spec.bflops = 2.0 * n_weights * out_h * out_w / 1e9
        spec.extra = {"pad": pad, "stride": (sy, sx), "groups": groups, "dilation": dilation}
    elif kind == "maxpool":
        stride = _positive(sec, "stride")
        sy = sec["stride_y"] if sec["stride_y"] > 0 else stride
        sx = sec["stride_x"] if sec["stride_x"] > 0 else stride
        size = sec.get("size", stride)
        if size <= 0:
            raise sec.error(f"[maxpool] size={size}: must be > 0", "size")
        padding = sec.get("padding", size - 1)
        if padding < 0:
            raise sec.error(f"[maxpool] padding={padding}: must be >= 0", "padding")
        if sec["maxpool_depth"] or sec["antialiasing"]:
            raise sec.error("[maxpool] maxpool_depth/antialiasing are not supported")
        out_h = (h + padding - size) // sy + 1
        out_w = (w + padding - size) // sx + 1
        spec.out_shape = (c, out_h, out_w)
        spec.bflops = size * size * c * out_h * out_w / 1e9
        spec.extra = {"size": size, "stride": (sy, sx), "padding": padding}
    elif kind == "avgpool":
        spec.out_shape = (c, 1, 1)
    elif kind == "route":
        spec.sources = _resolve(sec, "layers", index, len(layers))
        groups = _positive(sec, "groups")
        group_id = sec["group_id"]
        if not 0 <= group_id < groups:
            raise sec.error(f"[route] group_id={group_id}: must be in 0..{groups - 1}", "group_id")
        shapes = [layers[s].out_shape for s in spec.sources]
        for s, shape in zip(spec.sources, shapes, strict=True):
            if shape[1:] != shapes[0][1:]:
                raise sec.error(
                    f"[route] layers={sec.options['layers'].raw} joins layer {spec.sources[0]} "
                    f"({shapes[0][1]}x{shapes[0][2]}) with layer {s} ({shape[1]}x{shape[2]}); "
                    "routed layers must have the same height and width",
                    "layers",
                )
            if shape[0] % groups:
                raise sec.error(
                    f"[route] groups={groups} does not divide the {shape[0]} channels of layer {s}",
                    "groups",
                )
        spec.in_shape = shapes[0]
        spec.out_shape = (sum(s[0] // groups for s in shapes), shapes[0][1], shapes[0][2])
    elif kind in ("shortcut", "sam", "scale_channels"):
        refs = _resolve(sec, "from", index, len(layers))
        if index == 0:
            raise sec.error(f"[{kind}] cannot be the first layer; it combines two layers")
        spec.sources = [index - 1, *refs]
        if kind == "scale_channels":
            (ref,) = refs[:1] if len(refs) == 1 else (None,)
            if ref is None:
                raise sec.error("[scale_channels] from= takes exactly one layer", "from")
            fc, fh, fw = layers[ref].out_shape
            ok = (c, h, w) == ((1, fh, fw) if sec["scale_wh"] else (fc, 1, 1))
            if not ok:
                raise sec.error(
                    f"[scale_channels] scales layer {ref} {layers[ref].out_shape} by the previous "
                    f"layer's {prev}; expected {(1, fh, fw) if sec['scale_wh'] else (fc, 1, 1)}",
                    "from",
                )
            spec.out_shape = (fc, fh, fw)
        else:
            # Darknet's shortcut checks only height and width: with other channel counts,
            # channel k of a `from` layer is added where k < the previous layer's channels.
            for ref in refs:
                same = layers[ref].out_shape[1:] == prev[1:] if kind == "shortcut" else \
                    layers[ref].out_shape == prev  # fmt: skip
                if not same:
                    what = (
                        "height and width" if kind == "shortcut" else "channels, height and width"
                    )
                    raise sec.error(
                        f"[{kind}] from={sec.options['from'].raw} combines layer {ref} "
                        f"{layers[ref].out_shape} with layer {index - 1} {prev}; both must have "
                        f"the same {what}",
                        "from",
                    )
            if kind == "sam" and len(refs) != 1:
                raise sec.error("[sam] from= takes exactly one layer", "from")
        if kind == "shortcut":
            n = len(refs) + 1
            wtype = sec["weights_type"]
            spec.params = {"none": 0, "per_feature": n, "per_channel": n * c}[wtype]
            spec.bflops = c * h * w * len(refs) / 1e9
    elif kind == "upsample":
        stride = sec["stride"]
        if stride <= 0:
            raise sec.error(f"[upsample] stride={stride}: only positive strides are supported",
                            "stride")  # fmt: skip
        spec.out_shape = (c, h * stride, w * stride)
    elif kind == "yolo":
        _check_yolo(sec, c)
    elif kind == "connected":
        out = _positive(sec, "output")
        inputs = c * h * w
        spec.out_shape = (out, 1, 1)
        spec.params = inputs * out + (2 * out if sec["batch_normalize"] else out)
        spec.bflops = 2.0 * inputs * out / 1e9
    elif kind == "softmax":
        groups = _positive(sec, "groups")
        if (c * h * w) % groups:
            raise sec.error(f"[softmax] groups={groups} does not divide its {c * h * w} inputs")
        if sec["tree"]:
            raise sec.error("[softmax] tree= (hierarchical softmax) is not supported", "tree")
    elif kind == "dropout":
        p = sec["probability"]
        if not 0.0 <= p < 1.0:
            raise sec.error(f"[dropout] probability={p}: must be in [0, 1)", "probability")
    elif kind == "net":  # pragma: no cover - parse_cfg rejects a second [net]
        raise sec.error("a second [net] section")
    return spec


def _check_yolo(sec: Section, channels: int) -> None:
    num = sec["num"]
    if num <= 0:
        raise sec.error(f"[yolo] num={num}: must be > 0", "num")
    anchors = sec["anchors"]
    if anchors is None or len(anchors) < 2 * num:
        have = 0 if anchors is None else len(anchors)
        raise sec.error(
            f"[yolo] num={num} needs {2 * num} anchor values (w,h pairs), found {have}",
            "anchors" if anchors is not None else "num",
        )
    mask = sec["mask"] if sec["mask"] is not None else list(range(num))
    for m in mask:
        if not 0 <= m < num:
            raise sec.error(
                f"[yolo] mask={sec.options['mask'].raw} uses anchor {m}, but num={num} anchors "
                f"are defined (indices 0..{num - 1})",
                "mask",
            )
    classes = sec["classes"]
    if classes <= 0:
        raise sec.error(f"[yolo] classes={classes}: must be > 0", "classes")
    expected = len(mask) * (classes + 5)
    if channels != expected:
        raise sec.error(
            f"[yolo] gets {channels} channels but {len(mask)} anchors x (5 + classes={classes}) "
            f"= {expected}; set filters={expected} in the [convolutional] before it",
            "classes",
        )


def yolo_anchors(sec: Section) -> tuple[list[int], list[tuple[float, float]]]:
    """The mask and the (w, h) anchors in input pixels that a ``[yolo]`` section uses."""
    num = sec["num"]
    mask = sec["mask"] if sec["mask"] is not None else list(range(num))
    a = sec["anchors"]
    return mask, [(a[2 * m], a[2 * m + 1]) for m in mask]
