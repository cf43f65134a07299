"""Training checkpoints: written atomically, read as untrusted input.

A checkpoint holds everything a run needs to continue exactly: the model's state dict, the
optimizer's, the position (epoch, step within it, total step), the RNG states (torch, CUDA,
NumPy, Python), and the state of every hook that has one (a hook with ``state_dict()`` and
``load_state_dict()``: EMA, a pruning hook's Z/U/masks/rho, ...), keyed by the hook's class
name and its rank among hooks of that class (see :func:`stateful_hooks`). Files are written to
a temporary file and renamed (:func:`~yolo_prune.utils.io.atomic_open`), so a kill leaves the
previous checkpoint intact,
and loaded with ``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yolo_prune.engine.hooks import Hook, TrainState
from yolo_prune.errors import WeightsError
from yolo_prune.utils.io import atomic_write_bytes, load_torch_file

logger = logging.getLogger(__name__)

FORMAT = "yolo_prune.checkpoint/1"


def rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors and plain values (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def stateful_hooks(hooks: Sequence[Hook]) -> dict[str, Hook]:
    """Hooks with ``state_dict()``/``load_state_dict()``, keyed ``ClassName:n`` (``n``-th of
    that class), so that adding or removing stateless hooks does not change the keys."""
    seen: dict[str, int] = {}
    out = {}
    for h in hooks:
        if callable(getattr(h, "state_dict", None)) and callable(
            getattr(h, "load_state_dict", None)
        ):
            name = type(h).__name__
            n = seen.get(name, 0)
            seen[name] = n + 1
            out[f"{name}:{n}"] = h
    return out


def hook_states(hooks: Sequence[Hook]) -> dict[str, Any]:
    """``state_dict()`` of every stateful hook, keyed as :func:`stateful_hooks` keys them."""
    return {key: h.state_dict() for key, h in stateful_hooks(hooks).items()}


def save_checkpoint(
    path: str | Path,
    state: TrainState,
    *,
    model: nn.Module | None = None,
    epoch_done: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint of ``state`` to ``path`` atomically.

    Args:
        path: destination file.
        state: the loop's state (model, optimizer, position, hooks).
        model: the module to save if not ``state.model`` (e.g. the one inside a DDP wrapper).
        epoch_done: saved at an epoch's end (resume at the next epoch) rather than in mid-epoch.
        extra: plain values to keep alongside (config, metrics).
    """
    m = state.model if model is None else model
    payload = {
        "format": FORMAT,
        "model": m.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        "epoch_step": state.epoch_step,
        "step": state.step,
        "epoch_done": epoch_done,
        "rng": rng_state(),
        "hooks": hook_states(state.hooks),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "extra": dict(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("checkpoint %s: epoch %d step %d", path, state.epoch, state.step)


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only).

    Raises:
        WeightsError: the file is missing, unreadable, holds pickled Python objects (refused
            without running them), or is not a checkpoint of this format.
    """
    p = Path(path)
    data = load_torch_file(p, what="checkpoint", map_location=map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise WeightsError(f"not a {FORMAT} checkpoint", path=p)
    return data


def resume_position(data: dict[str, Any]) -> tuple[int, int, int]:
    """``(start_epoch, start_step, start_epoch_step)`` for :meth:`Trainer.fit` after ``data``."""
    if data["epoch_done"]:
        return int(data["epoch"]) + 1, int(data["step"]), 0
    return int(data["epoch"]), int(data["step"]), int(data["epoch_step"])


def restore_checkpoint(
    data: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    hooks: Sequence[Hook] = (),
    restore_rng: bool = True,
    scaler: Any = None,
) -> None:
    """Load a checkpoint's model, optimizer, hook and RNG states into a fresh run.

    Raises:
        WeightsError: the checkpoint's model or hooks do not match this run's.
    """
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise WeightsError(f"the checkpoint's model does not match the cfg: {exc}") from None
    optimizer.load_state_dict(data["optimizer"])
    saved = data.get("hooks", {})
    wanted = stateful_hooks(hooks)
    missing = sorted(set(wanted) - set(saved))
    if missing:
        raise WeightsError(
            f"the checkpoint has no state for hook(s) {', '.join(missing)}; it holds "
            f"{', '.join(sorted(saved)) or 'none'} (resume with the hooks of the original run)"
        )
    for key, hook in wanted.items():
        hook.load_state_dict(saved[key])
    if scaler is not None and data.get("scaler") is not None:
        scaler.load_state_dict(data["scaler"])
    if restore_rng:
        set_rng_state(data["rng"])


class CheckpointHook(Hook):
    """Write ``directory/last.pt`` at every epoch's end and every ``every_steps`` optimizer steps.

    Args:
        directory: where ``last.pt`` goes.
        every_steps: also save in mid-epoch every this many steps (0: only at epoch ends).
        model: the module to save if not ``state.model``.
        enabled: ``False`` on every distributed rank but 0 (only rank 0 writes).
        extra: a callable returning plain values to store (config, metrics so far).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        every_steps: int = 0,
        model: nn.Module | None = None,
        enabled: bool = True,
        extra: Any = None,
    ):
        if every_steps < 0:
            raise ValueError(f"every_steps={every_steps}; expected >= 0")
        self.path = Path(directory) / "last.pt"
        self.every_steps = every_steps
        self.model = model
        self.enabled = enabled
        self.extra = extra

    def _save(self, state: TrainState, *, epoch_done: bool) -> None:
        if self.enabled:
            extra = self.extra() if callable(self.extra) else None
            save_checkpoint(self.path, state, model=self.model, epoch_done=epoch_done, extra=extra)

    def after_step(self, state: TrainState) -> None:
        # state.step / epoch_step are incremented after this hook: save what they will be.
        if self.every_steps and (state.step + 1) % self.every_steps == 0:
            state.step += 1
            state.epoch_step += 1
            try:
                self._save(state, epoch_done=False)
            finally:
                state.step -= 1
                state.epoch_step -= 1

    def epoch_end(self, state: TrainState) -> None:
        self._save(state, epoch_done=True)
