"""Loading a (pruned) model from any weights file the tool writes or reads.

``.weights`` (Darknet), a PyTorch state dict (``.pt``/``.pth``, loaded with
``weights_only=True``: a checkpoint is untrusted input), a sparse file from
:func:`yolo_prune.prune.sparse.save_sparse`, which may carry its cfg, or an exported ``.onnx``
detector (float or INT8), which runs in ONNX Runtime and needs no cfg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from yolo_prune.errors import ConfigError, WeightsError, require_file
from yolo_prune.utils.io import load_torch_file


def load_model(
    cfg: Path | None, weights: Path, *, size: int | None = None
) -> tuple[nn.Module, str]:
    """The Darknet model of ``cfg`` filled from ``weights``; returns ``(model, weights format)``."""
    from yolo_prune.darknet import Darknet
    from yolo_prune.prune.sparse import is_sparse_file, load_sparse

    require_file(weights, "weights file")
    if cfg is not None:
        require_file(cfg, "cfg file")
    if weights.suffix.lower() == ".onnx":
        from yolo_prune.runtime import load_onnx_model

        model = load_onnx_model(weights)
        if size is not None and size != model.input_shape[1]:
            raise ConfigError(
                f"{weights.name} runs at {model.input_shape[2]}x{model.input_shape[1]} only (its "
                "input size is fixed at export); drop --size or export it again at that size"
            )
        return model, "onnx"
    if is_sparse_file(weights):
        state, meta = load_sparse(weights)
        if cfg is not None:
            model = Darknet.from_cfg(cfg, size=size)
        elif isinstance(meta.get("cfg"), str):
            model = Darknet.from_cfg_text(meta["cfg"], size=size)
        else:
            raise ConfigError(f"{weights.name} carries no cfg; give --cfg")
        _load_state(model, state, weights)
        return model, "sparse"
    if cfg is None:
        raise ConfigError("--cfg is required unless --weights is a sparse file that carries one")
    model = Darknet.from_cfg(cfg, size=size)
    with weights.open("rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if zipped or weights.suffix in (".pt", ".pth"):
        state = load_torch_file(weights, what="PyTorch state dict")
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise WeightsError("expected a state dict (name -> tensor)", path=weights)
        _load_state(model, state, weights)
        return model, "state_dict"
    model.load_weights(weights)
    return model, "darknet"


def _load_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        what = (
            f"missing {result.missing_keys[0]!r}"
            if result.missing_keys
            else f"unexpected {result.unexpected_keys[0]!r}"
        )
        raise WeightsError(
            f"tensors do not match the cfg ({what}, {len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected); check that --cfg is the one trained",
            path=path,
        )
