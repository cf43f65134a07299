"""Quantization-aware fine-tuning: the training forward pass rounds what the INT8 file rounds.

    with quant_aware(model, calibration_images) as hook:
        train_detector(config, hooks=[hook], model=model)   # or any loop that calls hooks
    # model: plain float layers again, its weights on the 7-bit grid of the INT8 export

ONNX Runtime's post-training quantization (:func:`~yolo_prune.export.quantize.quantize_onnx_int8`)
keeps a dense detector's AP50, but a shrunk Yolo-Fastest lost 4-5 points in INT8 however the
file was quantized (docs/deploy.md, session 21). The usual answer is to fine-tune the float
model while its forward pass sees the rounding, so that its weights settle where rounding
costs little; the file that ships is still quantized by ORT's tools afterwards. What the hook
rounds mirrors :func:`~yolo_prune.export.quantize.quantize_onnx_int8`'s defaults:

* the weights of every convolution the export quantizes (all but the heads before each
  ``[yolo]`` and the linear convolutions: ``keep_float=("linear",)``), per output channel,
  symmetric, on ORT's 7-bit grid (``reduce_range``: integers -64..64, step ``max|w| / 64``).
  The export folds each batch norm into its convolution first; that multiplies each output
  channel by one number, which a per-channel symmetric grid follows exactly, so rounding the
  unfolded weight rounds the folded one the same way;
* the activations, per tensor, asymmetric, unsigned 8-bit, over the central 99.95% of their
  values (ORT's Percentile calibration): the output of every layer but the ``[yolo]`` decode
  and the heads, and the input of the activation of every activated convolution (ORT's
  ``QLinearLeakyRelu`` reads it in 8 bits). The ranges come from the calibration images with
  the rounding off, before the first epoch and again before each later one.

Gradients pass straight through the rounding (``torch.fake_quantize_*``). Measured on two
96-image folds of the coco128 training images (docs/deploy.md, "Quantization-aware
fine-tuning"): the shrunk Yolo-Fastest's INT8 file moved by -4.3 to +3.5 AP50 over nine
settings, no gain that held; the extra epochs overfit these few images as much as they teach
the model to bear the rounding. So the prune job runs it only when a recipe asks
(``qat_epochs``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from yolo_prune.darknet.layers import ConvLayer, DropoutLayer, YoloLayer
from yolo_prune.engine.hooks import Hook, TrainState
from yolo_prune.export.quantize import DEFAULT_PERCENTILE

logger = logging.getLogger(__name__)

# ORT's int8 weight grid with ``reduce_range`` (7 bits: onnxruntime.quantization.quant_utils).
WEIGHT_QMIN, WEIGHT_QMAX = -64, 64
# uint8 activations.
ACT_QMIN, ACT_QMAX = 0, 255
# Values drawn per tensor and batch to estimate a range (torch.quantile takes at most 2**24).
_SAMPLES = 200_000


def round_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded per output channel, symmetrically, to the 7-bit grid (gradient straight
    through)."""
    scale = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12) / WEIGHT_QMAX
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(
        w, scale.float(), zero, 0, WEIGHT_QMIN, WEIGHT_QMAX
    )


class _RoundedConv(nn.Conv2d):
    """A ``Conv2d`` whose forward pass uses its weight rounded by :func:`round_weight`.

    :func:`quant_aware` switches a convolution's class to this one and back (the same object,
    the same parameters): its state-dict names stay those of a plain model, so checkpoints,
    the EMA's copy and ``.weights`` files see nothing unusual, and the optimizer keeps its
    parameters. (A ``torch.nn.utils.parametrize`` parametrization renames the weight and
    cannot be deep-copied.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, round_weight(self.weight), self.bias)


def _quantized_layers(model: nn.Module) -> tuple[list[nn.Conv2d], list[tuple[str, nn.Module]]]:
    """The convolutions whose weights the export rounds, and the tensors it rounds: the input
    of an activation module (named ``<layer>.pre``; a forward pre-hook on the activation, so
    that it stays in place when the batch norm is folded for evaluation) or the output of a
    layer (``<layer>.out``)."""
    layers = getattr(model, "layers", None)
    sources = getattr(model, "sources", None)
    if layers is None or sources is None:
        raise TypeError("quant_aware needs a Darknet model (layers and sources)")
    heads = {
        (srcs[0] if srcs else i - 1)
        for i, (layer, srcs) in enumerate(zip(layers, sources, strict=True))
        if isinstance(layer, YoloLayer)
    }
    convs: list[nn.Conv2d] = []
    points: list[tuple[str, nn.Module]] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, (YoloLayer, DropoutLayer)) or i in heads:
            continue  # the decode and the heads stay float; dropout is gone at inference
        if isinstance(layer, ConvLayer) and not isinstance(layer.act, nn.Identity):
            convs.append(layer.conv)
            points.append((f"{i}.pre", layer.act))
        points.append((f"{i}.out", layer))
    return convs, points


class QuantAwareHook(Hook):
    """Re-estimates the activation ranges before each epoch; made by :func:`quant_aware`."""

    def __init__(self, model: nn.Module, calibration: torch.Tensor, batch: int = 8):
        self.model = model
        self.calibration = calibration
        self.batch = batch
        self.convs, self.points = _quantized_layers(model)
        self.ranges: dict[str, tuple[float, float]] = {}
        self._rounding = True
        self._handles: list[Any] = []

    def _rounded(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if not self._rounding or name not in self.ranges:
            return x
        lo, hi = self.ranges[name]
        scale = max((hi - lo) / (ACT_QMAX - ACT_QMIN), 1e-8)
        zero = min(max(round(-lo / scale), ACT_QMIN), ACT_QMAX)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, ACT_QMIN, ACT_QMAX)

    def _hook(self, name: str, module: nn.Module, fn: Any) -> Any:
        """``fn(tensor)`` called on the tensor of point ``name``; returns the hook handle."""
        if name.endswith(".pre"):
            return module.register_forward_pre_hook(lambda m, args: (fn(args[0]), *args[1:]))
        return module.register_forward_hook(lambda m, args, out: fn(out))

    def attach(self) -> None:
        for conv in self.convs:
            if type(conv) is not nn.Conv2d:
                raise TypeError(f"quant_aware rounds plain Conv2d layers, not {type(conv)}")
            conv.__class__ = _RoundedConv
        self._handles = [
            self._hook(n, m, lambda x, n=n: self._rounded(n, x)) for n, m in self.points
        ]
        self.estimate_ranges()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for conv in self.convs:
            if isinstance(conv, _RoundedConv):
                conv.__class__ = nn.Conv2d
                with torch.no_grad():
                    conv.weight.copy_(round_weight(conv.weight))

    @torch.no_grad()
    def estimate_ranges(self) -> None:
        """Each rounded tensor's range: the central ``DEFAULT_PERCENTILE`` % of its values on the
        calibration images (eval mode, activations unrounded), widened to hold 0."""
        model, was_training = self.model, self.model.training
        device = next(model.parameters()).device
        drawn: dict[str, list[torch.Tensor]] = {n: [] for n, _ in self.points}
        generator = torch.Generator().manual_seed(0)

        def sample(name: str, x: torch.Tensor) -> torch.Tensor:
            flat = x.detach().flatten().float().cpu()
            if flat.numel() > _SAMPLES:
                flat = flat[torch.randint(flat.numel(), (_SAMPLES,), generator=generator)]
            drawn[name].append(flat)
            return x

        handles = [self._hook(n, m, lambda x, n=n: sample(n, x)) for n, m in self.points]
        self._rounding = False
        model.eval()
        try:
            for k in range(0, len(self.calibration), self.batch):
                model(self.calibration[k : k + self.batch].to(device))
        finally:
            for handle in handles:
                handle.remove()
            self._rounding = True
            model.train(was_training)
        cut = (100.0 - DEFAULT_PERCENTILE) / 200.0  # clipped half at each end, as ORT does
        for name, values in drawn.items():
            v = torch.cat(values)
            if len(v) > 2**24 - 1:
                v = v[torch.randint(len(v), (2**24 - 1,), generator=generator)]
            lo, hi = torch.quantile(v, torch.tensor([cut, 1.0 - cut])).tolist()
            self.ranges[name] = (min(lo, 0.0), max(hi, 0.0))

    def before_epoch(self, state: TrainState) -> None:
        if state.epoch > 0 and state.epoch_step == 0:
            self.estimate_ranges()


@contextlib.contextmanager
def quant_aware(model: nn.Module, calibration: torch.Tensor) -> Iterator[QuantAwareHook]:
    """Round ``model``'s weights and activations as the INT8 export will while the block runs;
    yields the hook the training loop must be given (it refreshes the activation ranges).

    On exit the model is a plain float model again, its rounded convolutions' weights left on
    the 7-bit grid. Its state-dict names never change, so a checkpoint saved inside the block
    loads into the model outside it, and the other way round.

    Args:
        model: a Darknet detector (its ``layers`` and ``sources``).
        calibration: images ``[N, 3, H, W]`` pre-processed as in training, that set the
            activation ranges (training images, never the ones the model is scored on).
    """
    hook = QuantAwareHook(model, calibration)
    hook.attach()
    logger.info(
        "quantization-aware: %d convs rounded to 7 bits, %d activations to 8",
        len(hook.convs),
        len(hook.points),
    )
    try:
        yield hook
    finally:
        hook.detach()
