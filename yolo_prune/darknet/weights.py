"""Darknet ``.weights`` files: read into a :class:`Darknet`, write back byte for byte.

Format (little-endian): int32 major, minor, revision; ``seen`` (images trained on) as uint64
when ``major * 10 + minor >= 2``, else uint32; then float32 values layer by layer. A
convolutional layer stores its biases (the BN shift with batch_normalize), then with BN the
scales, rolling means and rolling variances, then the weights ``[filters, c/groups, k, k]``.
A connected layer stores biases, weights ``[out, in]``, then with BN scales, means, variances.
A weighted shortcut stores its weights. Nothing else carries values.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from yolo_prune.errors import WeightsError
from yolo_prune.utils.io import atomic_open


def layer_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """The tensors of one layer in the order Darknet stores them (empty if it has none)."""
    conv, fc, bn = (
        getattr(layer, "conv", None),
        getattr(layer, "fc", None),
        getattr(layer, "bn", None),
    )
    if conv is not None:
        if bn is not None:
            return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
        return [conv.bias, conv.weight]
    if fc is not None:
        out = [fc.bias, fc.weight]
        if bn is not None:
            out += [bn.weight, bn.running_mean, bn.running_var]
        return out
    weight = getattr(layer, "weight", None)
    return [weight] if isinstance(weight, torch.Tensor) else []


def model_tensors(model: nn.Module) -> list[torch.Tensor]:
    """All tensors of a Darknet model in file order."""
    return [t for layer in model.layers for t in layer_tensors(layer)]


def _read_header(data: bytes, path: Path) -> tuple[tuple[int, int, int, int], int]:
    if len(data) < 16:
        raise WeightsError(
            f"{len(data)} bytes is shorter than a Darknet header (16-20 bytes); the file is "
            "empty or truncated",
            path=path,
        )
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if not (0 <= major < 1000 and 0 <= minor < 1000 and revision >= 0):
        if data[:4] == b"PK\x03\x04":
            what = "it is a zip archive (a PyTorch .pt checkpoint?), not Darknet .weights"
        elif all(32 <= b < 127 or b in b"\t\r\n" for b in data[:64]):
            what = "it is a text file (a .cfg? were --cfg and --weights swapped?)"
        else:
            what = "is this a .weights file (not a .cfg, .pt or .onnx)?"
        raise WeightsError(
            f"bad header: version {major}.{minor}.{revision} is not a Darknet weights version; "
            + what,
            path=path,
        )
    if major * 10 + minor >= 2:
        if len(data) < 20:
            raise WeightsError("the header is truncated (no 'seen' counter)", path=path)
        (seen,) = struct.unpack_from("<Q", data, 12)
        return (major, minor, revision, seen), 20
    (seen,) = struct.unpack_from("<I", data, 12)
    return (major, minor, revision, seen), 16


def load_darknet_weights(model: nn.Module, path: str | Path) -> None:
    """Fill ``model`` (a Darknet) from ``path`` and keep the header on ``model.header``.

    Raises:
        WeightsError: missing file, bad header, or a float count that does not fit the cfg
            (the message says by how many floats).
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError("no such weights file; check the path" if not p.exists()
                           else "is a directory, expected a .weights file", path=p)  # fmt: skip
    data = p.read_bytes()
    header, offset = _read_header(data, p)
    body = len(data) - offset
    if body % 4:
        raise WeightsError(
            f"{body} bytes after the header is not a whole number of float32 values; the file "
            "is truncated or not a Darknet weights file",
            path=p,
        )
    values = np.frombuffer(data, dtype="<f4", offset=offset)
    tensors = model_tensors(model)
    needed = sum(t.numel() for t in tensors)
    if values.size != needed:
        diff = values.size - needed
        floats = "float" if abs(diff) == 1 else "floats"
        if diff > 0:
            what = f"{diff:,} {floats} left after filling the network"
        else:
            what = f"{-diff:,} {floats} too few for the network ({values.size:,} of {needed:,})"
        if (diff, offset) in ((1, 16), (-1, 20)):
            # The version decides whether 'seen' takes 4 or 8 bytes: a wrong version in the
            # header shifts every value by one float.
            fix = (
                f"the header's version {header[0]}.{header[1]} gives a {offset - 12}-byte 'seen' "
                f"counter; with a {24 - offset}-byte one the values would fit, so the header's "
                "version is probably wrong"
            )
        else:
            fix = (
                "the cfg and the weights do not match (check classes= and the filters= before "
                "each [yolo], and that this is the cfg these weights were trained with)"
            )
        raise WeightsError(f"{what}; {fix}", path=p)
    pos = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(torch.from_numpy(values[pos : pos + n].copy()).view_as(t))
            pos += n
    model.header = header


def save_darknet_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``model`` as a Darknet ``.weights`` file (atomically) with ``model.header``."""
    _check_savable(model, path)
    with atomic_open(path) as f:
        write_darknet_weights(model, f)


def write_darknet_weights(model: nn.Module, f: BinaryIO) -> None:
    """Write ``model`` in the ``.weights`` layout to an open binary file (header first)."""
    _check_savable(model, None)
    major, minor, revision, seen = getattr(model, "header", (0, 2, 5, 0))
    if major * 10 + minor >= 2:
        f.write(struct.pack("<3iQ", major, minor, revision, seen))
    else:
        f.write(struct.pack("<3iI", major, minor, revision, seen))
    for t in model_tensors(model):
        f.write(t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())


def _check_savable(model: nn.Module, path: str | Path | None) -> None:
    if getattr(model, "fused", False):
        raise WeightsError(
            "this model had its batch norms folded (fuse_) for inference; save the model "
            "before fusing",
            path=path,
        )
