"""Atomic file writes, and reading ``torch.save`` files as untrusted input.

Everything the tool writes goes to a temporary file in the destination folder, is flushed to
disk, then renamed over the destination; an interrupted write leaves the previous file intact.

Everything the tool reads with ``torch.load`` goes through :func:`load_torch_file`, which
unpickles tensors and plain containers only (``weights_only=True``): a checkpoint downloaded or
handed over by someone else cannot run code on loading.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from yolo_prune.errors import WeightsError


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary binary file that replaces ``path`` only when the block succeeds."""
    with atomic_open_all(path) as (f,):
        yield f


@contextlib.contextmanager
def atomic_open_all(*paths: str | Path) -> Iterator[list[BinaryIO]]:
    """Temporary binary files that replace ``paths`` together when the block succeeds.

    Every file is written and flushed to disk before the first rename, so an interruption
    leaves all the previous files (or, in the microseconds between the renames, a mix): use it
    for files that only make sense as a set, such as a cfg and its weights.
    """
    dests = [Path(p) for p in paths]
    temps: list[str] = []
    files: list[BinaryIO] = []
    try:
        for dest in dests:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            temps.append(tmp)
            files.append(os.fdopen(fd, "wb"))
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        yield files
        for f in files:
            f.flush()
        for f in files:
            os.fsync(f.fileno())
            f.close()
        for tmp, dest in zip(temps, dests, strict=True):
            os.replace(tmp, dest)
    except BaseException:
        for f in files:
            with contextlib.suppress(OSError):
                f.close()
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def load_torch_file(
    path: str | Path, *, what: str = "checkpoint", map_location: Any = "cpu"
) -> Any:
    """Read a ``torch.save`` file with ``weights_only=True``: tensors and plain data only.

    Args:
        path: the file.
        what: what the caller expects it to be, for messages ("checkpoint", "state dict").
        map_location: passed to ``torch.load``.

    Raises:
        WeightsError: one line naming the file: it is missing, empty, damaged, not written by
            ``torch.save``, or it holds pickled Python objects (refused: rebuilding them could
            run arbitrary code).
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(
            f"no such {what}; check the path" if not p.exists() else f"is a folder, not a {what}",
            path=p,
        )
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols on stderr; the error below says all there is.
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = "weights only load failed" in str(exc).lower()
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        with p.open("rb") as f:
            magic = f.read(2)
        if refused and (found or magic[:1] == b"\x80" or magic == b"PK"):
            # A pickle (bare, or inside a torch.save zip) that needs more than tensors and
            # plain containers; junk bytes that merely look like opcodes fall through.
            obj = "pickled data other than tensors"
            if found:
                obj = f"a pickled Python object ({found.group(1)})"
            raise WeightsError(
                f"refused to load this {what}: it holds {obj}, and unpickling it could run "
                "arbitrary code; only tensors and plain containers are read (re-save just the "
                "tensors, e.g. torch.save(model.state_dict(), path), where the file came from)",
                path=p,
            ) from None
        raise WeightsError(
            f"not a readable {what}: not written by torch.save, or damaged", path=p
        ) from None
    except EOFError:
        raise WeightsError(
            f"not a readable {what}: the file is empty or truncated", path=p
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises KeyError, RuntimeError, ... on junk
        raise WeightsError(
            f"not a readable {what}: not written by torch.save, or damaged "
            f"({type(exc).__name__}: {_first_line(exc)})",
            path=p,
        ) from None


def _first_line(exc: BaseException, limit: int = 100) -> str:
    """The first sentence of an exception's message, short enough for a one-line error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(". ", 1)[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
