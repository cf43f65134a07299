"""Static INT8 quantization of an exported detector with ONNX Runtime's own tools.

    from yolo_prune.export.quantize import calibration_batches, quantize_onnx_int8
    batches = calibration_batches(model, "../shared/data/coco128", images=64)
    quantize_onnx_int8(Path("float.onnx"), Path("int8.onnx"), calibration=batches)

The work is ``onnxruntime.quantization``'s: :func:`quant_pre_process` (symbolic shape inference
and ORT's basic graph optimizations) and then :func:`quantize_static` in the QDQ format, with
per-channel int8 weights and uint8 activations, ``reduce_range`` on (7-bit weights). ORT's
u8 x s8 kernels on x86 cores without VNNI (AVX2, AVX-512 without VNNI) add pairs of products
in 16 bits with saturation (``vpmaddubsw``), and 8-bit weights overflow it; 7-bit weights
cannot. Measured on an AMD EPYC [avx2, no VNNI] (2026-12-01, AP50 on the 64 coco128 val
images, the same calibration): yolov3-tiny float 41.87, 8-bit weights 39.00, 7-bit 42.80;
Yolo-Fastest float 42.70, 8-bit 41.40, 7-bit 42.00 (paired bootstrap of INT8 minus float:
yolov3-tiny 8-bit -2.88 [-7.79, -1.29], 7-bit +0.92 [-2.26, +3.28]; Yolo-Fastest 8-bit -1.30
[-4.68, +1.66], 7-bit -0.70 [-3.15, +2.11]). On a Xeon with VNNI
the 7-bit weights cost nothing measurable (the first-round table below: 42.24 against 42.62
and 33.69 against 33.08, within the noise), and speed is the same kernels either way. The
file a user ships may run on either kind of core, so 7-bit is the default;
``--int8-full-range`` (8-bit) is for VNNI or ARM targets. Activation ranges are the central
99.95% of each activation's histogram (ORT's Percentile calibration), from calibration
batches the caller prepares with the model's own pre-processing
(:func:`calibration_batches`: training images, never the images the model is scored on).

What stays float, and why:

* The YOLO decode (sigmoid, exp, the grid and anchor arithmetic, the reshapes and the final
  concat) is found by walking the graph backwards from its outputs and stopping at the first
  convolution on every path (:func:`find_head`); no node names are assumed. Quantizing it
  would put box coordinates in pixels (0..320) and objectness on the same 8-bit grid, and ORT
  runs those small element-wise ops no faster in int8.
* The head convolutions (the last conv before each ``[yolo]``) stay float by default
  (``keep_float_heads=True``): they are about 5% of yolov3-tiny's multiply-adds, and their
  outputs are logits whose 8-bit grid shows directly in objectness and box sizes.
* The linear convolutions (``keep_float=("linear",)``, the default: convs whose output reaches
  no activation, i.e. the 1x1 bottlenecks before Yolo-Fastest's residual adds; yolov3-tiny has
  none but its heads). Measured: +1.2 AP50 on Yolo-Fastest at no speed cost.
  ``"depthwise"`` (group convs of one channel per group, with their activation) and
  ``"activations"`` can be kept float too; both were measured and do not pay (table below).
* The stem (``"stem"``): the convolution that reads the image, its activation, and a max pool
  it feeds alone. With three input channels ORT's int8 convolution is slower than its float
  one, which also fuses the activation: yolov3-tiny's first conv at 320 took 11.6 ms as
  QLinearConv, plus 2.0 ms of QLinearLeakyRelu and 0.5 ms quantizing the image, against
  4.8 ms in float (ORT profile, 1 thread, AMD EPYC [avx2, no VNNI], under load; session 15).
  Kept float, it hands ORT a float max pool followed by a QuantizeLinear, which ORT's
  QDQ propagation moves above the pool: the pool then runs in uint8 in NCHW, ORT's slow
  layout (18.5 ms). The sessions :mod:`yolo_prune.runtime.onnxrt` opens disable that
  transformer; a plain ORT session of such a file is slower than the all-int8 one.
  Measured (session 15, AP50 on the 64 val images with ``compare_points.py``; speed-up over
  the float file, ORT side by side with spinning off, 1 / 2 threads): yolov3-tiny AP50 43.28
  with the stem float against 42.80 all-int8 and 41.87 float, 1.66x / 1.43x against 1.49x /
  1.25x; its 30%-channel shrunk model 26.02 against 24.39 (float 24.59). Yolo-Fastest gains
  no speed (0.91x / 0.89x against 0.80x / 0.88x) and loses AP50: 40.92 against 42.00 (float
  42.70), and its shrunk model 14.55 against 16.56 (float 19.44; -4.89 [-9.09, -0.22] against
  float). So ``"stem"`` is not a default: pass ``--int8-keep-float linear,stem`` for a
  yolov3-tiny-like model whose stem runs at full resolution before a max pool.
* A max pool that Darknet pads with -inf (yolov3-tiny's stride-1 pool) is padded with edge
  values instead (:func:`edge_pad_max_pools_`: the same maxima exactly); an infinite range
  made every scale after it inf and the INT8 model's output zero.

Measured (scratch scripts, not committed) on coco128: AP50 on the 64 val2017 images through ORT
and our pre/post-processing (conf 0.005, NMS 0.45), calibration on coco128 train2017 (64 images
unless said); ORT 1.23, per-channel s8 weights, u8 activations. CPU: "Intel(R) Xeon(R)
Processor" (avx2 avx512f avx_vnni avx512_vnni amx_int8), 2 cores shared with another user's
jobs: read the speed-up, float and INT8 timed side by side, not the milliseconds.

Second round (the current defaults come from it): ORT batch 1, 320x320,
``intra_op_num_threads=1``, median of 30 runs alternating float and INT8 (float 10-11 ms for
Yolo-Fastest, 26-30 ms for yolov3-tiny). "linear float" etc. are ``keep_float`` kinds; heads
float in every row.

=========================================  ==========  =====  ============  ========
variant                                    model       AP50   dAP50 (pts)   speed-up
=========================================  ==========  =====  ============  ========
float                                      fastest-xl  42.70
minmax (the old default)                   fastest-xl  36.05  -6.65         1.04x
minmax, depthwise float                    fastest-xl  36.39  -6.31         0.72x
minmax, linear float                       fastest-xl  37.34  -5.36         1.00x
minmax, activations float                  fastest-xl  36.05  -6.65         1.04x
minmax, depthwise + linear float           fastest-xl  37.78  -4.92         0.68x
minmax, op_types_to_quantize=[Conv]        fastest-xl  36.05  -6.65         1.02x
minmax, CalibMovingAverage                 fastest-xl  38.45  -4.25         1.03x
minmax, ActivationSymmetric                fastest-xl  26.06  -16.64        1.02x
percentile 99.999 (ORT's default)          fastest-xl  37.69  -5.01         1.04x
percentile 99.99                           fastest-xl  39.08  -3.62         1.03x
percentile 99.95                           fastest-xl  41.74  -0.96         1.03x
percentile 99.9                            fastest-xl  41.50  -1.20         1.02x
percentile 99.5                            fastest-xl  38.18  -4.52         1.05x
percentile 99                              fastest-xl  32.97  -9.73         1.03x
percentile 99.95, 128 images               fastest-xl  41.86  -0.84         1.04x
percentile 99.95, QuantizeBias off         fastest-xl  41.35  -1.35         1.02x
percentile 99.95, DedicatedQDQPair         fastest-xl  41.74  -0.96         1.05x
percentile 99.95, ForceQuantizeNoInputChk  fastest-xl  41.74  -0.96         1.02x
percentile 99.95, linear float (default)   fastest-xl  42.95  +0.25         1.03x
float                                      yolov3-tiny 41.87
minmax (the old default)                   yolov3-tiny 43.01  +1.14         1.44x
percentile 99.9                            yolov3-tiny 42.28  +0.41         1.69x
percentile 99.95, linear float (default)   yolov3-tiny 42.86  +0.99         1.68x
=========================================  ==========  =====  ============  ========

With two threads the defaults gave 1.17x (Yolo-Fastest) and 1.49x (yolov3-tiny), the float
time itself moving 3x under the other user's load. Weights alone are not the problem: every
conv weight rounded to per-channel int8 in a float model gives AP50 42.80 (42.70 float).

What this says:

* Accuracy: Yolo-Fastest's loss is 8-bit *activations* (ORT's ``qdq_loss_debug``: each
  tensor's own quantization error is 27-42 dB, but the error against the float model falls to
  17 dB after the first depthwise conv and to 4-6 dB after the linear bottlenecks: a depthwise
  filter passes the rounding noise of its input and much less of the signal). MinMax ranges,
  set by rare outliers, leave the bulk of each activation a few levels; clipping the outer
  0.05% (Percentile 99.95) buys the resolution back: -6.65 -> -0.96 points. Keeping the
  linear bottlenecks float (float weights and accumulation; their inputs and outputs stay
  8-bit, the residual adds are QLinearAdd) adds 1.2-1.3 points under both calibrations:
  small beside the noise, but consistent and free -> +0.25. The AP50 is from 64 images: about
  +-1 point is noise, so 99.9 and 99.95 tie and yolov3-tiny's rows above float are noise as
  well. Keeping the depthwise convs float does not help: their inputs are still quantized.
* Speed: no variant makes Yolo-Fastest faster than 1.05x. ORT profiling (1 thread, per run):
  float spends 7.0 ms in 1x1 convs, 3.0 ms in depthwise convs, its leaky ReLUs fused into
  the convs for free; INT8 spends 2.9 ms in 1x1 QLinearConv (2.4x faster), 2.9 ms in
  depthwise QLinearConv (no faster), and 3.4 ms in 54 QLinearLeakyRelu nodes (a table
  lookup per element, 1.7 ns each over 2.0 M elements) that ORT cannot fuse into QLinearConv
  (it drops only Relu and Clip). That lookup eats the whole gain of the 1x1 convs. Keeping the
  depthwise convs float lets ORT fuse them with their activation but adds Q/DQ and layout
  changes around each: 0.7x. yolov3-tiny, whose dense 3x3 convs dominate, runs 1.7x faster.
* So the targets (within 1.5 points and 1.5x faster) are met for yolov3-tiny, and for
  Yolo-Fastest only the accuracy one: its INT8 model is as accurate as float but not faster
  in ORT 1.23 on this CPU; ship Yolo-Fastest in float where speed is the point.
* Percentile calibration takes 4-5x MinMax's time (30 s against 6 s for 64 images here);
  Entropy produced exactly MinMax's scales (0 of 159 differ, first round) and takes 8x longer.

First round (the previous defaults: MinMax, heads float, nothing else float): latency with
``intra_op_num_threads=2``, median of 40 runs alternating float and INT8, the float figure
moving 16-92 ms between rows.

=====================================  ==========  =====  ============  ========
variant (64 calibration images)        model       AP50   dAP50 (pts)   speed-up
=====================================  ==========  =====  ============  ========
float                                  yolov3-tiny 41.87
minmax, heads int8                     yolov3-tiny 42.62  +0.75         1.62x
minmax, heads float                    yolov3-tiny 43.01  +1.14         1.44x
percentile, heads int8                 yolov3-tiny 41.59  -0.28         1.52x
percentile, heads float                yolov3-tiny 42.98  +1.11         1.67x
minmax, 16 images, heads int8          yolov3-tiny 41.43  -0.44         1.67x
minmax, per-tensor, heads int8         yolov3-tiny 41.05  -0.82         1.70x
minmax, reduce_range, heads int8       yolov3-tiny 42.24  +0.37         1.73x
minmax, no quant_pre_process           yolov3-tiny 42.62  +0.75         1.45x
float                                  fastest-xl  42.70
minmax, heads int8                     fastest-xl  33.08  -9.62         1.03x
minmax, heads float                    fastest-xl  36.05  -6.65         0.99x
entropy, heads int8                    fastest-xl  33.08  -9.62         0.82x
percentile, heads int8                 fastest-xl  38.45  -4.25         1.10x
percentile, heads float                fastest-xl  37.69  -5.01         0.95x
minmax, 16 / 128 images, heads int8    fastest-xl  33.87 / 33.53    1.02x / 1.11x
minmax, per-tensor, heads int8         fastest-xl  33.63  -9.07         1.06x
minmax, reduce_range, heads int8       fastest-xl  33.69  -9.01         1.21x
minmax, no quant_pre_process           fastest-xl  33.08  -9.62         1.14x
=====================================  ==========  =====  ============  ========

("percentile" there is ORT's default 99.999.) Heads float cost no measurable speed and gave
+0.4 points on yolov3-tiny, hence that default. ``quant_pre_process`` changed no figure (its
symbolic shape inference cannot run on the decode, so only ONNX shape inference and ORT's
basic optimizations remain); it is kept on. Both rounds ran without ``reduce_range`` except
where a row says so (this CPU had VNNI/AMX); it is the default since the AVX2 measurement at
the top of this docstring.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from yolo_prune.errors import ConfigError, DataError, require_file
from yolo_prune.utils.io import atomic_write_bytes

logger = logging.getLogger(__name__)

# The calibration methods offered, by the name a user types.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# The method used when none is named (see the measurements in the module docstring).
DEFAULT_METHOD = "percentile"
# The percentile of |activation| histograms that "percentile" calibration keeps (measured best).
DEFAULT_PERCENTILE = 99.95
# The kinds of node kept float when none are named (measured: see the module docstring).
DEFAULT_KEEP_FLOAT = ("linear",)

# The metadata_props key (and value) that marks a model this module wrote.
QUANTIZATION_KEY = "quantization"
QUANTIZATION_VALUE = "int8-qdq"


def calibration_batches(
    model: nn.Module,
    data: str | Path,
    *,
    images: int = 64,
    split: str | None = None,
    letterbox: bool | None = None,
) -> list[np.ndarray]:
    """Calibration inputs from a training dataset folder, pre-processed as the model wants.

    Args:
        model: a Darknet detector; its ``input_shape`` fixes the geometry, its cfg's
            ``letter_box`` the resize mode (unless ``letterbox`` is given).
        data: a dataset folder (YOLO txt or COCO JSON layout, see
            :class:`~yolo_prune.data.train_dataset.TrainDataset`).
        images: how many images (the first ones of the split).
        split: the split to read; ``None``: the first ``train*`` split. Calibrate on training
            images: calibrating on the evaluation images flatters the quantized model's AP.
        letterbox: keep aspect ratios; ``None``: the cfg's ``letter_box``.

    Returns:
        One float32 ``[1, 3, H, W]`` array per image, RGB in [0, 1], NCHW memory.

    Raises:
        ConfigError: ``images`` is not positive.
        DataError: the dataset cannot be read or holds no usable image.
    """
    from yolo_prune.detect.calibrate import calibration_images

    if images < 1:
        raise ConfigError(f"calibration images {images}; expected a positive number")
    batch = calibration_images(model, data, images=images, split=split, letterbox=letterbox)
    array = batch.numpy().astype(np.float32, copy=False)
    return [np.ascontiguousarray(array[i : i + 1]) for i in range(array.shape[0])]


def calibration_method(name: str) -> Any:
    """ORT's ``CalibrationMethod`` called ``name`` (one of :data:`CALIBRATION_METHODS`).

    Raises:
        ConfigError: an unknown name.
    """
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in methods:
        raise ConfigError(
            f"unknown calibration method {name!r}; choose one of: {', '.join(methods)}"
        )
    return methods[name]


class _Batches:
    """ORT's ``CalibrationDataReader`` protocol (``get_next``) over a list of input arrays."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]):
        self._input_name = input_name
        self._batches = batches
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self._input_name: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def find_head(model: Any) -> tuple[list[str], list[str]]:
    """The head convolutions and the decode nodes of an ONNX detector, by graph traversal.

    Walks backwards from the graph outputs through the producers of every input, stopping at
    each ``Conv``: the convs reached are the heads (the last conv before each ``[yolo]``), the
    other nodes reached make up the decode (every node with a path to an output that crosses
    no conv).

    Args:
        model: an ``onnx.ModelProto`` whose nodes all have names.

    Returns:
        ``(head_convs, decode_nodes)``: node names, each list in graph order.
    """
    producer = {out: node for node in model.graph.node for out in node.output if out}
    order = {id(node): i for i, node in enumerate(model.graph.node)}
    heads: dict[int, Any] = {}
    decode: dict[int, Any] = {}
    stack = [producer[o.name] for o in model.graph.output if o.name in producer]
    while stack:
        node = stack.pop()
        if id(node) in heads or id(node) in decode:
            continue
        if node.op_type == "Conv":
            heads[id(node)] = node
            continue
        decode[id(node)] = node
        stack.extend(producer[name] for name in node.input if name in producer)

    def names(found: dict[int, Any]) -> list[str]:
        return [n.name for n in sorted(found.values(), key=lambda n: order[id(n)])]

    return names(heads), names(decode)


# Activation ops a convolution may feed directly; a conv whose output reaches none is "linear".
ACTIVATION_OPS = frozenset(
    {"LeakyRelu", "Relu", "Sigmoid", "Tanh", "Mish", "Softplus", "HardSigmoid", "HardSwish", "Elu"}
)
# The kinds of node :func:`find_float_nodes` recognizes, by the name a user types.
FLOAT_KINDS = ("depthwise", "linear", "activations", "stem")


def check_float_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """``kinds`` as a tuple, each one of :data:`FLOAT_KINDS`.

    Raises:
        ConfigError: an unknown kind. A bare string is taken as one kind, not as letters.
    """
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for kind in kinds:
        if kind not in FLOAT_KINDS:
            raise ConfigError(
                f"unknown kind of node to keep float {kind!r}; choose from: "
                f"{', '.join(FLOAT_KINDS)}"
            )
    return kinds


def _consumers(model: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _is_depthwise(model: Any, conv: Any) -> bool:
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    weight = _constant(model, conv.input[1]) if len(conv.input) > 1 else None
    # One input channel per group and more than one group: each filter sees one channel.
    return group > 1 and weight is not None and weight.ndim == 4 and weight.shape[1] == 1


def find_float_nodes(model: Any, kinds: Sequence[str], *, skip: Sequence[str] = ()) -> list[str]:
    """The nodes of ``kinds`` in an ONNX detector, found by graph inspection (no names assumed).

    Kinds (see :data:`FLOAT_KINDS`):

    * ``"depthwise"``: convolutions with one input channel per group (``group > 1``), and the
      activation each feeds alone, so that ORT can still fuse the two into one float kernel;
    * ``"linear"``: convolutions whose output reaches no activation op (the 1x1 bottlenecks
      before a residual add);
    * ``"activations"``: every activation op (:data:`ACTIVATION_OPS`) that a convolution feeds;
    * ``"stem"``: convolutions that read a graph input (the image), the activation each feeds
      alone, and a max pool that activation feeds alone: ORT's int8 kernels are slow with
      three input channels.

    Args:
        model: an ``onnx.ModelProto`` whose nodes all have names.
        kinds: the kinds to collect.
        skip: node names never returned (the heads, which have their own switch).

    Returns:
        Node names in graph order, each once.

    Raises:
        ConfigError: an unknown kind.
    """
    kinds = check_float_kinds(kinds)
    consumers = _consumers(model)
    inputs = {i.name for i in model.graph.input}
    skipped = set(skip)
    found: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name in skipped:
            continue
        users = consumers.get(node.output[0], [])
        activations = [u for u in users if u.op_type in ACTIVATION_OPS]
        if "depthwise" in kinds and _is_depthwise(model, node):
            found.add(node.name)
            if len(users) == 1 and activations:
                found.add(activations[0].name)
        if "linear" in kinds and not activations:
            found.add(node.name)
        if "activations" in kinds:
            found.update(a.name for a in activations)
        if "stem" in kinds and node.input[0] in inputs:
            found.add(node.name)
            if len(users) == 1 and activations:
                found.add(activations[0].name)
                after = consumers.get(activations[0].output[0], [])
                if len(after) == 1 and after[0].op_type == "MaxPool":
                    found.add(after[0].name)
    return [n.name for n in model.graph.node if n.name in found]


def _load_onnx(src: Path) -> Any:
    import onnx

    require_file(src, "ONNX model")
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning or ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"not an ONNX model ({first[:80]}); export one with yolo-prune export --format onnx",
            path=src,
        ) from None
    if not model.graph.node or not model.graph.input:
        raise DataError(
            "not an ONNX model (no graph); export one with yolo-prune export --format onnx",
            path=src,
        )
    return model


def _name_nodes_(model: Any) -> None:
    # ORT selects nodes to exclude by name; an unnamed node could not be kept float.
    taken = {node.name for node in model.graph.node if node.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _constant(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        is_value = node.attribute and node.attribute[0].name == "value"
        if node.op_type == "Constant" and node.output[0] == name and is_value:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def edge_pad_max_pools_(model: Any) -> int:
    """Turn ``Pad(value=-inf) -> MaxPool`` into ``Pad(mode=edge) -> MaxPool``; returns how many.

    Darknet pads a max pool with -inf (yolov3-tiny's stride-1 pool). Calibration then sees an
    infinite range, every scale downstream becomes inf and the INT8 model outputs zeros
    (measured: AP50 0.0). Edge padding gives the same maxima, exactly: a padded cell copies the
    nearest real cell, which lies in the same window whenever the window holds a real cell (as
    Darknet's padding, smaller than the pool, guarantees); and ORT then quantizes the Pad's
    output with its input's parameters.
    """
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Pad" or len(node.input) < 3 or not node.input[2]:
            continue
        mode = next((a for a in node.attribute if a.name == "mode"), None)
        if mode is not None and mode.s not in (b"", b"constant"):
            continue
        value = _constant(model, node.input[2])
        users = consumers.get(node.output[0], [])
        if value is None or value.size != 1 or not np.isneginf(value).all():
            continue
        if not users or any(u.op_type != "MaxPool" for u in users):
            continue
        del node.input[2:]
        if mode is None:
            node.attribute.add(name="mode", type=3, s=b"edge")  # 3: AttributeProto.STRING
        else:
            mode.s = b"edge"
        changed += 1
    if changed:  # drop the -inf values nothing reads now (ORT warns about unused initializers)
        used = {name for node in model.graph.node for name in node.input}
        keep = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return changed


def _check_batches(model: Any, calibration: Sequence[np.ndarray], src: Path) -> str:
    if len(calibration) == 0:
        raise ConfigError(
            "no calibration images; give training images of the model's input size "
            "(yolo-prune export --int8 --calib DATA)"
        )
    weights = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in weights)
    dims = [
        d.dim_value if d.HasField("dim_value") else None
        for d in graph_input.type.tensor_type.shape.dim
    ]
    for k, batch in enumerate(calibration):
        shape = tuple(np.shape(batch))
        fits = len(shape) == len(dims) and all(
            want is None or want == got for want, got in zip(dims[1:], shape[1:], strict=True)
        )
        if not fits or np.asarray(batch).dtype != np.float32:
            expected = "x".join("B" if d is None else str(d) for d in dims)
            raise DataError(
                f"calibration batch {k} is {np.asarray(batch).dtype} {list(shape)}; the model "
                f"takes float32 [{expected}] (pre-process at the model's input size)",
                path=src,
            )
    return graph_input.name


def check_percentile(method: str, percentile: float | None) -> float | None:
    """The percentile that ``method`` calibrates with: ``None`` unless ``"percentile"``.

    Raises:
        ConfigError: a percentile outside (0, 100], or one given with another method.
    """
    if method != "percentile":
        if percentile is not None:
            raise ConfigError(
                f"a percentile ({percentile}) only applies to percentile calibration, not "
                f"{method!r}; drop it or choose method 'percentile'"
            )
        return None
    if percentile is None:
        return DEFAULT_PERCENTILE
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(
            f"calibration percentile {percentile}; expected a share in percent in (0, 100], "
            f"such as {DEFAULT_PERCENTILE}"
        )
    return float(percentile)


# ORT's histogram calibrators (percentile, entropy) keep every tensor of every calibration
# image in memory before building their histograms (MinMax reduces as it goes). yolov4 at 608
# has 3.4 GB of float tensors per image (ONNX shape inference): 64 images would not fit a
# 24 GB machine. Yolo-Fastest (98 MB) and yolov3-tiny (31 MB) keep all 64 within this budget.
HISTOGRAM_MEMORY_BYTES = 8 * 2**30


def activation_bytes(model: Any) -> int:
    """Bytes of the float tensors one image makes flow through ``model`` (ONNX shape inference;
    a symbolic dimension, the batch, counts as 1)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    total = 0
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        tensor = info.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            continue
        total += 4 * int(np.prod([d.dim_value or 1 for d in tensor.shape.dim]))
    return total


def _fit_memory(model: Any, calibration: Sequence[np.ndarray], method: str) -> Sequence[np.ndarray]:
    """``calibration``, or an evenly spaced part of it that a histogram calibrator can hold in
    :data:`HISTOGRAM_MEMORY_BYTES` (with a warning saying how many images were kept)."""
    if method == "minmax":
        return calibration
    per_image = max(1, activation_bytes(model))
    fits = max(1, HISTOGRAM_MEMORY_BYTES // per_image)
    if len(calibration) <= fits:
        return calibration
    step = len(calibration) / fits
    kept = [calibration[int(i * step)] for i in range(fits)]
    logger.warning(
        "%s calibration keeps every activation of every image (%.0f MB each here): "
        "calibrating on %d of the %d images to stay within %d GB",
        method, per_image / 1e6, fits, len(calibration), HISTOGRAM_MEMORY_BYTES // 2**30,
    )  # fmt: skip
    return kept


def quantize_onnx_int8(
    src: Path,
    dst: Path,
    *,
    calibration: Sequence[np.ndarray],
    keep_float_heads: bool = True,
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
    per_channel: bool = True,
    method: str = DEFAULT_METHOD,
    percentile: float | None = None,
    reduce_range: bool = True,
    preprocess: bool = True,
) -> dict[str, Any]:
    """Quantize a float ONNX detector to INT8 (QDQ) with ORT's static quantization.

    Args:
        src: the float ``.onnx`` (from :func:`~yolo_prune.export.onnx.export_onnx`).
        dst: where the INT8 ``.onnx`` goes (written atomically; may equal ``src``).
        calibration: float32 input batches ``[B, 3, H, W]`` (usually ``B = 1``), RGB in [0, 1],
            pre-processed exactly as at inference (see :func:`calibration_batches`).
        keep_float_heads: also keep the convolutions that feed the ``[yolo]`` decode in float.
        keep_float: kinds of node also kept float, found by graph inspection (one of
            :data:`FLOAT_KINDS` each, see :func:`find_float_nodes`).
        per_channel: one weight scale per output channel (else one per tensor).
        method: activation-range calibration, one of :data:`CALIBRATION_METHODS`.
        percentile: with ``method="percentile"``, the share of each activation histogram kept
            inside the range, in percent (``None``: :data:`DEFAULT_PERCENTILE`); the rest is
            clipped, half at each end.
        reduce_range: 7-bit weights (the default: a file right on every x86 core; see the
            module doc). False gives 8-bit weights, for VNNI or ARM cores only.
        preprocess: run ORT's ``quant_pre_process`` (shape inference, graph optimization) first.

    Returns:
        A summary: ``method``, ``percentile`` (``None`` for other methods), ``per_channel``,
        ``reduce_range``, ``preprocess``,
        ``calibration_images`` (inputs run), ``keep_float`` (the kinds), ``head_convs`` and
        ``float_nodes`` (names kept float: decode, heads, kinds), ``quantized_convs`` (convs with
        int8 weights) and ``bytes`` (of ``dst``).

    Raises:
        ConfigError: no calibration batches, an unknown ``method`` or kind in ``keep_float``,
            or a ``percentile`` outside (0, 100] or given with another method.
        DataError: ``src`` is not an ONNX model, has no convolution before its output, or the
            batches do not fit its input.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    calibrate_method = calibration_method(method)
    keep_float = check_float_kinds(keep_float)
    percentile = check_percentile(method, percentile)
    src, dst = Path(src), Path(dst)
    source = _load_onnx(src)
    input_name = _check_batches(source, calibration, src)
    with tempfile.TemporaryDirectory(prefix="yolo_prune_int8_") as tmp:
        model = source
        if preprocess:
            prepared = Path(tmp) / "prepared.onnx"
            # ORT's symbolic shape inference gives up on the decode's Range over a dynamic
            # batch ("Incomplete symbolic shape inference"); ONNX's own inference suffices.
            quant_pre_process(source, prepared, skip_symbolic_shape=True)
            model = onnx.load(str(prepared))
        calibration = _fit_memory(model, calibration, method)
        _name_nodes_(model)
        if edge_pad_max_pools_(model):
            logger.info("max-pool padding -inf -> edge (same maxima, finite ranges)")
        heads, decode = find_head(model)
        if not heads:
            raise DataError(
                "no convolution feeds the model's output; expected a detector from "
                "yolo-prune export",
                path=src,
            )
        float_nodes = decode + heads if keep_float_heads else decode
        kept = find_float_nodes(model, keep_float, skip=heads)
        float_nodes += kept
        logger.info(
            "keeping %d decode nodes%s and %d %s nodes float; %d head convs",
            len(decode),
            ", the heads" if keep_float_heads else "",
            len(kept),
            "/".join(keep_float) or "other",
            len(heads),
        )
        out = Path(tmp) / "int8.onnx"
        try:
            # ORT's calibrators print their progress; library code logs, the CLI prints.
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    model,
                    out,
                    _Batches(input_name, calibration),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=float_nodes,
                    calibrate_method=calibrate_method,
                    extra_options={} if percentile is None else {"CalibPercentile": percentile},
                )
        except ValueError as exc:  # numpy's histogram of an activation that overflowed
            if "not finite" not in str(exc):
                raise
            raise DataError(
                f"an activation overflowed on the calibration images ({exc}); a model with "
                "trained weights should not do this: check the weights and --size",
                path=src,
            ) from None
        quantized = onnx.load(str(out))
    del quantized.metadata_props[:]
    for prop in source.metadata_props:
        if prop.key != QUANTIZATION_KEY:
            quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key=QUANTIZATION_KEY, value=QUANTIZATION_VALUE)
    quantized.metadata_props.add(
        key="quantization_calibration",
        value=f"{method}{'' if percentile is None else f' {percentile}'}, "
        f"{len(calibration)} batches, per_channel={per_channel}, "
        f"reduce_range={reduce_range}, float_heads={keep_float_heads}, "
        f"keep_float={','.join(keep_float) or 'none'}",
    )
    data = quantized.SerializeToString()
    atomic_write_bytes(dst, data)
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in quantized.graph.node if n.op_type == "Conv"]
    summary = {
        "method": method,
        "percentile": percentile,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "preprocess": preprocess,
        "calibration_images": len(calibration),
        "keep_float": keep_float,
        "head_convs": heads,
        "float_nodes": float_nodes,
        "quantized_convs": sum(len(n.input) > 1 and n.input[1] in dequantized for n in convs),
        "bytes": len(data),
    }
    logger.info("wrote %s (%d of %d convs int8)", dst, summary["quantized_convs"], len(convs))
    return summary
