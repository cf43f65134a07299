"""PyTorch modules for each Darknet layer type, computing what Darknet computes.

Every module takes its inputs as a list of tensors (the outputs of the layers named in its
``sources``, in order) and returns one tensor. Shapes are NCHW throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yolo_prune.darknet.cfg import Section
from yolo_prune.darknet.graph import LayerSpec, yolo_anchors

# Darknet's batch-norm epsilon at inference: normalize_cpu computes
# (x - mean) / sqrt(var + .000001f), and OpenCV's importer uses the same 1e-6.
BN_EPS = 1e-6


class HardMish(nn.Module):
    """Darknet's hard_mish: x for x > 0, x^2/2 + x for -2 < x <= 0, else 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


def build_activation(name: str) -> nn.Module:
    """The module for a Darknet ``activation=`` value (validated by the cfg schema)."""
    table = {
        "linear": nn.Identity,
        "leaky": lambda: nn.LeakyReLU(0.1),
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "mish": nn.Mish,
        "hard_mish": HardMish,
        "swish": nn.SiLU,
        "logistic": nn.Sigmoid,
        "tanh": nn.Tanh,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "gelu": lambda: nn.GELU(approximate="tanh"),
        "hardtan": lambda: nn.Hardtanh(-1.0, 1.0),
    }
    return table[name]()


class ConvLayer(nn.Module):
    """``[convolutional]``: conv (bias only without BN), optional batch norm, activation."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        sec, ex = spec.section, spec.extra
        bn = bool(sec["batch_normalize"])
        self.conv = nn.Conv2d(
            spec.in_shape[0],
            sec["filters"],
            sec["size"],
            stride=ex["stride"],
            padding=ex["pad"],
            dilation=ex["dilation"],
            groups=ex["groups"],
            bias=not bn,
        )
        self.bn = nn.BatchNorm2d(sec["filters"], eps=BN_EPS, momentum=0.01) if bn else None
        self.act = build_activation(sec["activation"])

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv(inputs[0])
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MaxPoolLayer(nn.Module):
    """``[maxpool]``: Darknet pads ``padding // 2`` before and the rest after, with -inf."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.size = spec.extra["size"]
        self.stride = spec.extra["stride"]
        padding = spec.extra["padding"]
        self.before = padding // 2
        self.after = padding - padding // 2

    def _after(self, length: int, stride: int) -> int:
        """Trailing padding some window reaches; Darknet's size-2 stride-2 pool on an even
        side pads a row that no window reads, and an explicit Pad costs a pass over the map
        (12% of an INT8 yolov3-tiny in ONNX Runtime)."""
        windows = (self.before + length + self.after - self.size) // stride + 1
        return max(0, (windows - 1) * stride + self.size - self.before - length)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = inputs[0]
        if self.size == 1 and self.stride == (1, 1):
            return x
        if self.after != self.before or self.before > self.size // 2:
            after_h = self._after(int(x.shape[-2]), self.stride[0])
            after_w = self._after(int(x.shape[-1]), self.stride[1])
            if self.before or after_h or after_w:
                pad = (self.before, after_w, self.before, after_h)
                x = F.pad(x, pad, value=float("-inf"))
            return F.max_pool2d(x, self.size, self.stride)
        return F.max_pool2d(x, self.size, self.stride, padding=self.before)


class AvgPoolLayer(nn.Module):
    """``[avgpool]``: global average over height and width."""

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return inputs[0].mean(dim=(2, 3), keepdim=True)


class RouteLayer(nn.Module):
    """``[route]``: concatenate sources along channels, each cut to its ``group_id`` share."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.groups = spec.section["groups"]
        self.group_id = spec.section["group_id"]

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.groups > 1:
            inputs = [x.chunk(self.groups, dim=1)[self.group_id] for x in inputs]
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class ShortcutLayer(nn.Module):
    """``[shortcut]``: sum of the previous layer and ``from`` layers, optionally weighted.

    The output has the previous layer's channels; a ``from`` layer with other channels adds
    its channel k to output channel k where both exist (Darknet's shortcut_multilayer).

    With ``weights_type`` per_feature (one weight per input) or per_channel (one per input and
    channel), the inputs are scaled first, the weights normalised by relu (w / (eps + sum)) or
    softmax as ``weights_normalization`` says, as Darknet's shortcut_multilayer does.
    """

    def __init__(self, spec: LayerSpec):
        super().__init__()
        sec = spec.section
        n = len(spec.sources)
        self.weights_type = sec["weights_type"]
        self.normalization = sec["weights_normalization"]
        if self.weights_type == "none":
            self.weight = None
        else:
            per = 1 if self.weights_type == "per_feature" else spec.out_shape[0]
            self.weight = nn.Parameter(torch.ones(n, per))
        self.act = build_activation(sec["activation"])

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        w = self.weight
        if w is not None:
            if self.normalization == "relu":
                w = F.relu(w)
                w = w / (1e-4 + w.sum(dim=0, keepdim=True))
            elif self.normalization == "softmax":
                e = torch.exp(w - w.max(dim=0, keepdim=True).values)
                w = e / (1e-4 + e.sum(dim=0, keepdim=True))
        out = inputs[0] if w is None else inputs[0] * w[0].view(1, -1, 1, 1)
        c = out.shape[1]
        for i, x in enumerate(inputs[1:], start=1):
            x = x[:, :c]  # a wider `from` layer: its extra channels are not used
            k = x.shape[1]
            if w is not None:
                x = x * (w[i, :k].view(1, -1, 1, 1) if w.shape[1] > 1 else w[i])
            if k == c:
                out = out + x
            else:  # a narrower one is added to the first k channels only
                out = torch.cat((out[:, :k] + x, out[:, k:]), dim=1)
        return self.act(out)


class UpsampleLayer(nn.Module):
    """``[upsample]``: nearest-neighbour upsampling by ``stride``, times ``scale``."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.stride = spec.section["stride"]
        self.scale = spec.section["scale"]

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = F.interpolate(inputs[0], scale_factor=self.stride, mode="nearest")
        return x * self.scale if self.scale != 1.0 else x


class SamLayer(nn.Module):
    """``[sam]``: element-wise product of the previous layer and the ``from`` layer."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.act = build_activation(spec.section["activation"])

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.act(inputs[0] * inputs[1])


class ScaleChannelsLayer(nn.Module):
    """``[scale_channels]``: the ``from`` feature map scaled by the previous layer's
    per-channel (C x 1 x 1) or, with ``scale_wh=1``, per-position (1 x H x W) values."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.act = build_activation(spec.section["activation"])

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.act(inputs[1] * inputs[0])


class ConnectedLayer(nn.Module):
    """``[connected]``: fully connected on the flattened (C*H*W) input, optional BN, act."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        sec = spec.section
        c, h, w = spec.in_shape
        bn = bool(sec["batch_normalize"])
        self.fc = nn.Linear(c * h * w, sec["output"], bias=True)
        self.bn = nn.BatchNorm1d(sec["output"], eps=BN_EPS, momentum=0.01) if bn else None
        self.act = build_activation(sec["activation"])

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = self.fc(inputs[0].flatten(1))
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)[:, :, None, None]


class SoftmaxLayer(nn.Module):
    """``[softmax]``: probabilities in eval mode; in training mode it passes logits through,
    so a loss can use ``cross_entropy`` on them (numerically safer than log of softmax)."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.groups = spec.section["groups"]
        self.temperature = spec.section["temperature"]

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = inputs[0]
        if self.training:
            return x
        shape = x.shape
        flat = x.reshape(shape[0], self.groups, -1) / self.temperature
        return torch.softmax(flat, dim=-1).reshape(shape)


class DropoutLayer(nn.Module):
    """``[dropout]``: inverted dropout while training, identity at inference. An
    ``nn.Dropout`` inside, so that code freezing every dropout of a model in training mode
    (a distillation teacher, channel importance) finds it without knowing Darknet."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.p = spec.section["probability"]
        self.drop = nn.Dropout(self.p)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.drop(inputs[0])


class YoloLayer(nn.Module):
    """``[yolo]``: decodes a head's raw output into boxes as Darknet's forward_yolo_layer and
    get_yolo_box do.

    Eval mode returns ``[B, A*H*W, 5 + C]`` rows ordered (anchor, row, column): centre x,
    centre y, width, height in input pixels, objectness, class probabilities (not multiplied by
    objectness). Training mode returns the raw ``[B, A, H, W, 5 + C]`` tensor for the loss.

    Boxes are decoded for the input actually given, as Darknet and OpenCV do: a cell is
    ``stride`` input pixels wide whatever the input size, so a model built for 608 and run at
    416 decodes a 13x13 grid into a 416-pixel image.
    """

    def __init__(self, spec: LayerSpec, input_hw: tuple[int, int]):
        super().__init__()
        sec: Section = spec.section
        mask, anchors = yolo_anchors(sec)
        self.mask = mask
        self.classes = sec["classes"]
        self.scale_x_y = float(sec["scale_x_y"])
        self.new_coords = bool(sec["new_coords"])
        _, grid_h, grid_w = spec.in_shape
        # Input pixels per grid cell (x, y): fixed by the layers before the head, not the input.
        self.stride = (input_hw[1] / grid_w, input_hw[0] / grid_h)
        self.register_buffer(
            "anchors", torch.tensor(anchors, dtype=torch.float32), persistent=False
        )

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = inputs[0]
        b, _, h, w = x.shape
        a = len(self.mask)
        x = x.view(b, a, 5 + self.classes, h, w).permute(0, 1, 3, 4, 2)
        if self.training:
            return x
        return self.decode(x).reshape(b, a * h * w, 5 + self.classes)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw ``[B, A, H, W, 5 + C]`` -> decoded boxes in input pixels, same shape."""
        _, _, h, w, _ = raw.shape
        xy, wh, rest = raw[..., :2], raw[..., 2:4], raw[..., 4:]
        if not self.new_coords:
            xy = torch.sigmoid(xy)
            rest = torch.sigmoid(rest)
        s = self.scale_x_y
        if s != 1.0:
            xy = xy * s - 0.5 * (s - 1.0)
        gy, gx = torch.meshgrid(
            torch.arange(h, device=raw.device, dtype=raw.dtype),
            torch.arange(w, device=raw.device, dtype=raw.dtype),
            indexing="ij",
        )
        grid = torch.stack((gx, gy), dim=-1)  # [H, W, 2] as (x, y)
        centre = (xy + grid) * torch.tensor(self.stride, device=raw.device, dtype=raw.dtype)
        anchors = self.anchors.to(raw.dtype).view(1, -1, 1, 1, 2)
        size = wh * wh * 4 * anchors if self.new_coords else torch.exp(wh) * anchors
        return torch.cat((centre, size, rest), dim=-1)


LAYER_TYPES = {
    "convolutional": ConvLayer,
    "maxpool": MaxPoolLayer,
    "route": RouteLayer,
    "shortcut": ShortcutLayer,
    "upsample": UpsampleLayer,
    "sam": SamLayer,
    "scale_channels": ScaleChannelsLayer,
    "connected": ConnectedLayer,
    "softmax": SoftmaxLayer,
    "dropout": DropoutLayer,
}


def build_layer(spec: LayerSpec, input_hw: tuple[int, int]) -> nn.Module:
    """The module for one resolved layer."""
    if spec.kind == "yolo":
        return YoloLayer(spec, input_hw)
    if spec.kind == "avgpool":
        return AvgPoolLayer()
    return LAYER_TYPES[spec.kind](spec)
