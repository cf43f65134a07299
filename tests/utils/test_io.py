"""Atomic writes survive SIGKILL; loading never unpickles untrusted data.

The kill tests fork a child that runs a real writer of the tool and stops it at a chosen point
inside the write (half of the new bytes in the temporary file, or all of them written but not
yet renamed), SIGKILL it there, and check that the destination still holds the complete old
file; then the same write run to its end leaves the complete new file.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import yolo_prune.utils.io as io_module
from yolo_prune.darknet import Darknet
from yolo_prune.detect.detector import Detector
from yolo_prune.detect.runner import detect_source
from yolo_prune.engine.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.engine.hooks import TrainState
from yolo_prune.errors import WeightsError
from yolo_prune.export.darknet import export_darknet
from yolo_prune.prune.sparse import load_sparse, save_sparse
from yolo_prune.utils.io import atomic_write_text, load_torch_file

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "bad_inputs" / "tiny.cfg"


def _model(seed: int) -> Darknet:
    torch.manual_seed(seed)
    model = Darknet.from_cfg(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


# --- the child: a writer that stops where we say -----------------------------------------------


def _pause(signal_fd: int) -> None:
    os.write(signal_fd, b"P")
    time.sleep(600)  # until the parent's SIGKILL


class _HalfWriter:
    """A file that writes the first ``limit`` bytes it is given in all, then stops."""

    budget = 0  # bytes left before stopping, over every file the child opens
    signal_fd = -1

    def __init__(self, f):
        self._f = f

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) >= _HalfWriter.budget:
            self._f.write(data[: _HalfWriter.budget])
            self._f.flush()
            _pause(_HalfWriter.signal_fd)
        _HalfWriter.budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _stop_inside_writes(where: str, signal_fd: int, budget: int) -> None:
    """Make, in the child only, every atomic write stop at ``where``."""
    if where == "before rename":  # every byte written and flushed, nothing renamed yet
        io_module.os.fsync = lambda fd: _pause(signal_fd)
        return
    _HalfWriter.budget, _HalfWriter.signal_fd = budget, signal_fd
    fdopen = io_module.os.fdopen
    io_module.os.fdopen = lambda fd, mode: _HalfWriter(fdopen(fd, mode))


def _kill_inside(write: Callable[[], None], where: str, budget: int) -> None:
    """Fork; the child runs ``write`` and stops ``where``; SIGKILL it there."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_fd)
            torch.set_num_threads(1)  # no OpenMP pool inherited half-made from the parent
            _stop_inside_writes(where, write_fd, budget)
            write()
        finally:
            os._exit(3)  # the write finished without stopping: the parent sees no "P"
    os.close(write_fd)
    try:
        got = os.read(read_fd, 1)
    finally:
        os.close(read_fd)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert got == b"P", "the child finished (or died) before reaching the stop point"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


# --- the writers under test -------------------------------------------------------------------


def _weights(tmp: Path, seed: int, target: Path) -> None:
    _model(seed).save_weights(target)


def _checkpoint(tmp: Path, seed: int, target: Path) -> None:
    model = _model(seed)
    state = TrainState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    save_checkpoint(target, state, epoch_done=True, extra={"seed": seed})


def _sparse(tmp: Path, seed: int, target: Path) -> None:
    save_sparse(target, _model(seed), meta={"seed": seed})


def _report(tmp: Path, seed: int, target: Path) -> None:  # eval's metrics.json, train's, ...
    rows = [{"epoch": e, "loss": 1.0 / (e + seed + 1)} for e in range(2000)]
    atomic_write_text(target, json.dumps({"seed": seed, "rows": rows}, indent=1) + "\n")


def _detections(tmp: Path, seed: int, target: Path) -> None:
    image = tmp / "image.png"
    if not image.exists():
        import cv2

        cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    model = _model(seed)
    detector = Detector(model, conf=0.001)  # random weights: thousands of boxes to write
    detect_source(detector, image, target.parent, names=["a", "b"], save=False)


def _export(tmp: Path, seed: int, target: Path) -> None:
    export_darknet(_model(seed), target.with_suffix(".cfg"), target)


WRITERS = {
    "weights": ("model.weights", _weights),
    "checkpoint": ("last.pt", _checkpoint),
    "sparse": ("model.sparse", _sparse),
    "report": ("metrics.json", _report),
    "detections": ("detections.json", _detections),
    "export-darknet": ("exported.weights", _export),
}


def _same_content(name: str, target: Path, expected: bytes) -> None:
    """``target`` holds ``expected`` (for torch.save archives: the same tensors and values)."""
    got = target.read_bytes()
    if name == "last.pt":
        a = load_checkpoint(target)
        b = torch.load(__import__("io").BytesIO(expected), weights_only=True)
        assert a["extra"] == b["extra"]
        for name, t in b["model"].items():
            torch.testing.assert_close(a["model"][name], t, rtol=0, atol=0)
    elif name == "model.sparse":
        state, meta = load_sparse(target)
        assert meta == torch.load(__import__("io").BytesIO(expected), weights_only=True)["meta"]
        assert len(got) == len(expected)
    else:
        assert got == expected


def _visible(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize("where", ["half written", "before rename"])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_kill_mid_write_leaves_the_old_file(kind, where, tmp_path):
    name, write = WRITERS[kind]
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    write(tmp_path, 2, scratch / name)  # what the new files will be
    new = _visible(scratch)
    write(tmp_path, 1, out / name)  # the old files
    old = _visible(out)
    assert new[name] != old[name]

    _kill_inside(lambda: write(tmp_path, 2, out / name), where, len(new[name]) // 2)

    assert _visible(out) == old, "a file was replaced by a partial one, or alone"
    # Temporary files are ".<name>.<random>.tmp" beside their destination.
    temps = {".".join(p.name[1:].split(".")[:-2]): p for p in out.iterdir() if p.name[0] == "."}
    assert name in temps, "the child did not die while writing a temporary file"
    if where == "half written":
        assert temps[name].stat().st_size < len(new[name])
    else:  # the new file was complete, only not yet in place
        _same_content(name, temps[name], new[name])

    write(tmp_path, 2, out / name)  # an uninterrupted write then replaces them whole
    for file, expected in new.items():
        _same_content(file, out / file, expected)


def test_an_export_replaces_cfg_and_weights_as_a_pair(tmp_path):
    export_darknet(_model(1), tmp_path / "m.cfg", tmp_path / "m.weights")
    model = Darknet.from_cfg(tmp_path / "m.cfg")
    model.load_weights(tmp_path / "m.weights")
    for a, b in zip(model.state_dict().values(), _model(1).state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- safe loading -------------------------------------------------------------------------------

SOURCES = sorted((REPO / "yolo_prune").rglob("*.py")) + sorted((REPO / "scripts").rglob("*.py"))


def _calls(path: Path) -> Iterator[tuple[str, ast.Call]]:
    """``(dotted name, node)`` of every call in ``path``: ``torch.load``, ``pickle.loads``..."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            yield ".".join(reversed(parts)), node


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_nothing_unpickles_untrusted_data():
    unsafe = []
    for path in SOURCES:
        where = path.relative_to(REPO)
        for name, node in _calls(path):
            line = f"{where}:{node.lineno}: {name}"
            if name == "torch.load" and _keyword(node, "weights_only") is not True:
                unsafe.append(f"{line} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load",
                        "joblib.load", "dill.load", "pd.read_pickle", "pandas.read_pickle"):  # fmt: skip
                unsafe.append(line)
            if name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is True:
                unsafe.append(f"{line} with allow_pickle=True")
    assert not unsafe, "\n".join(unsafe)


def test_library_writes_only_through_the_atomic_helpers():
    # Every file the library writes goes through yolo_prune.utils.io; a path handed straight
    # to a writer would leave a torn file behind a crash.
    direct = []
    for path in sorted((REPO / "yolo_prune").rglob("*.py")):
        if path.name == "io.py" and path.parent.name == "utils":
            continue
        where = path.relative_to(REPO)
        for name, node in _calls(path):
            line = f"{where}:{node.lineno}: {name}"
            last = name.rsplit(".", 1)[-1]
            if last in ("write_text", "write_bytes", "imwrite", "tofile"):
                direct.append(line)
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            modes += [_keyword(node, "mode")]
            if last == "open" and any(isinstance(m, str) and set(m) & set("wax+") for m in modes):
                direct.append(f"{line} for writing")
            at = {"torch.save": 1, "json.dump": 1, "np.save": 0, "np.savez": 0, "savefig": 0}
            index = at.get(name, at.get(last))
            if index is not None:
                dest = node.args[index] if len(node.args) > index else None
                if not isinstance(dest, ast.Name):  # a buffer or an atomic_open file
                    direct.append(f"{line} to a path")
    assert not direct, "\n".join(direct)


def test_a_malicious_checkpoint_is_refused_in_one_line_without_running(tmp_path):
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    for name, save in {
        "zip.pt": lambda p: torch.save({"model": RunsCode()}, p),
        "bare.pt": lambda p: p.write_bytes(__import__("pickle").dumps(RunsCode(), protocol=2)),
    }.items():
        save(tmp_path / name)
        with pytest.raises(WeightsError) as info:
            load_torch_file(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"{name}: refused to load this checkpoint: it holds a pickled")
        assert "could run arbitrary code" in message and "\n" not in message
        assert not marker.exists()
