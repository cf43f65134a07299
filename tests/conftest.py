"""Fixtures shared by every test folder, including the OpenCV reference for Darknet models."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see yolo_prune/cli/main.py

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from yolo_prune.darknet import Darknet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    env = os.environ.get("YOLO_PRUNE_SHARED")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        raise RuntimeError(
            f"the shared data folder is not at {path}; check out the project beside ../shared "
            "or set YOLO_PRUNE_SHARED to its data folder"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real cfgs, weights, images, COCO, MNIST, CIFAR-10, videos."""
    return _shared_data()


@pytest.fixture(scope="session")
def coco8_two_classes(shared_data, tmp_path_factory) -> Path:
    """8 real coco128 train images in YOLO txt layout (split ``train``), their labels folded
    onto 2 classes (``class % 2``) for the tiny 2-class test detector."""
    import shutil

    root = tmp_path_factory.mktemp("coco8_two_classes")
    src = shared_data / "coco128"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for image in sorted((src / "images" / "train2017").glob("*.jpg"))[:8]:
        shutil.copy(image, root / "images" / "train" / image.name)
        lines = (src / "labels" / "train2017" / f"{image.stem}.txt").read_text().split("\n")
        folded = [f"{int(s.split()[0]) % 2} {' '.join(s.split()[1:])}" for s in lines if s.strip()]
        (root / "labels" / "train" / f"{image.stem}.txt").write_text("\n".join(folded) + "\n")
    return root


@pytest.fixture(scope="session")
def repo_cfg() -> Path:
    """The project's ``cfg/`` folder."""
    return REPO / "cfg"


def randomize_(model: Darknet, *, seed: int = 0, var_inflation: float = 1.2) -> Darknet:
    """Fill ``model`` with random weights that exercise every layer, in place.

    Conv weights are He-normal; batch-norm scales/shifts are random and the running statistics
    are measured on a random batch (so activations stay O(1) through 160 layers). The running
    variances are then inflated by ``var_inflation``: with exactly calibrated statistics a
    random yolov4 is chaotic (a 1% change to a few weights of layer 1 changes the output by
    ~900%, and float32 rounding alone by 1.5e-3), which no two float32 implementations can
    agree to 1e-3 on. At 1.2 our float32 output is within 2e-5 of float64, yet the same 1%
    change still moves the output by 2%, so a wrong layer is caught.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.rand(mod.bias.shape, generator=gen) * 0.2 - 0.1)
            elif isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=gen) * 0.4 - 0.2)
                mod.reset_running_stats()
                mod.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        c, h, w = model.input_shape
        model(torch.rand((2, c, h, w), generator=gen))
        model.eval()
        for mod in model.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_var.mul_(var_inflation)
                mod.momentum = 0.01
    return model


def opencv_rows(cfg: Path, weights: Path, x: torch.Tensor) -> np.ndarray:
    """OpenCV DNN's [yolo] outputs for input ``x`` ``[1, 3, H, W]``, concatenated.

    Rows are ordered (yolo layer, row, column, anchor); columns are centre x, centre y, width,
    height relative to the input size, objectness, objectness * class probability (zeroed below
    OpenCV's threshold).
    """
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.enableWinograd(False)  # Winograd convolutions add ~1e-4 relative error of their own
    net.setInput(x.numpy())
    return np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))


def our_rows(model: Darknet, x: torch.Tensor) -> np.ndarray:
    """Our eval-mode output for ``x`` reordered as OpenCV orders rows, boxes made relative."""
    with torch.no_grad():
        y = model.eval()(x)[0]
    parts, offset = [], 0
    h, w = x.shape[-2:]
    for i in model.yolo_indices:
        a = len(model.layers[i].mask)
        sx, sy = model.layers[i].stride
        lh, lw = round(h / sy), round(w / sx)
        n = a * lh * lw
        parts.append(y[offset : offset + n].view(a, lh, lw, -1).permute(1, 2, 0, 3).reshape(n, -1))
        offset += n
    rows = torch.cat(parts).numpy().copy()
    rows[:, :4] /= np.array([w, h, w, h], dtype=np.float32)
    return rows


def row_errors(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Largest per-row relative error of the boxes (max-norm) and of objectness."""
    box = np.abs(ours[:, :4] - ref[:, :4]).max(1) / np.abs(ref[:, :4]).max(1)
    obj = np.abs(ours[:, 4] - ref[:, 4]) / np.abs(ref[:, 4])
    return float(box.max()), float(obj.max())


@pytest.fixture(scope="session")
def reference() -> Callable:
    """``reference(model, cfg, weights, x) -> (box_err, obj_err, ours, ref)``."""

    def run(model: Darknet, cfg: Path, weights: Path, x: torch.Tensor):
        ours, ref = our_rows(model, x), opencv_rows(cfg, weights, x)
        assert ours.shape == ref.shape
        return (*row_errors(ours, ref), ours, ref)

    return run


@pytest.fixture(scope="session")
def randomize() -> Callable:
    return randomize_


def _cifar_tarball(path: Path, split: str, n: int, seed: int) -> None:
    """A CIFAR-10 JPEG tarball of ``n`` random 32x32 images, class-sorted like the real one."""
    import io
    import tarfile

    classes = ("airplane", "automobile", "bird", "cat", "deer")
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for i in range(n):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            ok, buf = cv2.imencode(".jpg", img)
            assert ok
            info = tarfile.TarInfo(f"{split}/{classes[i % len(classes)]}/{i:04d}.jpg")
            info.size = len(buf)
            tar.addfile(info, io.BytesIO(buf.tobytes()))


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch) -> Path:
    """A CIFAR-10 folder with 40 train and 20 test random images (its decode cache in tmp)."""
    monkeypatch.setenv("YOLO_PRUNE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cifar10"
    root.mkdir()
    _cifar_tarball(root / "cifar10_jpg_train.tar.gz", "train", 40, seed=0)
    _cifar_tarball(root / "cifar10_jpg_test.tar.gz", "test", 20, seed=1)
    return root


@pytest.fixture(scope="session")
def small_mnist(shared_data, tmp_path_factory) -> Path:
    """The first 600 training and 300 test images of the real MNIST, as idx files."""
    import gzip
    import struct

    from yolo_prune.data.mnist import FILES, read_idx

    root = tmp_path_factory.mktemp("small_mnist")
    for split, n in (("train", 600), ("test", 300)):
        for name in FILES[split]:
            array = read_idx(shared_data / "mnist" / name)[:n]
            header = struct.pack(">HBB", 0, 0x08, array.ndim)
            dims = struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(root / name, "wb") as f:
                f.write(header + dims + array.astype(np.uint8).tobytes())
    return root
