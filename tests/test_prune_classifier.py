"""scripts/prune_classifier.py: its augmentation, and a tiny CIFAR-10 run end to end."""

from __future__ import annotations

import io
import json
import runpy
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "prune_classifier.py"
_script = runpy.run_path(str(SCRIPT))
ShuffledBatches, load_splits = _script["ShuffledBatches"], _script["load_splits"]


def _crops(img: torch.Tensor, shift: int, *, flip: bool) -> list[torch.Tensor]:
    """Every zero-padded crop of ``img`` [C, H, W] by up to ``shift`` px (and its mirror)."""
    _, h, w = img.shape
    padded = torch.nn.functional.pad(img, (shift,) * 4)
    out = []
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out += [crop, crop.flip(-1)] if flip else [crop]
    return out


def test_colour_batches_are_padded_crops_and_flips_with_their_labels():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand((10, 3, 8, 8), generator=gen) + 0.1  # no zeros but the padding
    labels = torch.arange(10)
    batches = ShuffledBatches(images, labels, batch_size=4, shift=2, seed=3, flip=True)
    seen, flipped = [], 0
    for x, y in batches:
        assert x.shape == (len(y), 3, 8, 8) and x.dtype == images.dtype
        for img, label in zip(x, y, strict=True):
            candidates = _crops(images[label], 2, flip=True)
            assert any(torch.equal(img, c) for c in candidates), int(label)
            unflipped = _crops(images[label], 2, flip=False)
            flipped += not any(torch.equal(img, c) for c in unflipped)
        seen += y.tolist()
    assert sorted(seen) == labels.tolist()  # every image once per epoch
    assert 0 < flipped < 10  # flips happen, not always


def test_one_channel_draws_and_pixels_are_unchanged():
    """MNIST runs keep their numbers: permutation, then dy, dx per batch, no flip draws."""
    images = torch.rand((9, 1, 6, 6))
    labels = torch.arange(9)
    got = list(ShuffledBatches(images, labels, batch_size=4, shift=2, seed=7))
    gen = torch.Generator().manual_seed(7)
    perm = torch.randperm(9, generator=gen)
    for i, (x, y) in zip(range(0, 9, 4), got, strict=True):
        idx = perm[i : i + 4]
        dy = torch.randint(0, 5, (len(idx),), generator=gen)
        dx = torch.randint(0, 5, (len(idx),), generator=gen)
        padded = torch.nn.functional.pad(images[idx], (2, 2, 2, 2))
        expected = torch.stack(
            [p[:, a : a + 6, b : b + 6] for p, a, b in zip(padded, dy, dx, strict=True)]
        )
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
        assert torch.equal(y, labels[idx])


def test_normalisation_is_per_channel():
    images = torch.rand((4, 3, 5, 5))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    batches = ShuffledBatches(
        images, torch.zeros(4, dtype=torch.long), batch_size=4, shift=0, seed=0, mean=mean, std=std
    )
    x = batches.augment(images)
    expected = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(x, expected)


def _cifar_tarball(path: Path, split: str, n: int, seed: int) -> None:
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


def test_cifar_splits_are_shuffled_once_and_fixed(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_PRUNE_CACHE", str(tmp_path / "cache"))
    _cifar_tarball(tmp_path / "cifar10_jpg_train.tar.gz", "train", 40, seed=0)
    _cifar_tarball(tmp_path / "cifar10_jpg_test.tar.gz", "test", 20, seed=1)
    splits = load_splits(tmp_path, "CIFAR-10", val_size=10)
    assert [len(splits[k][0]) for k in ("train", "val", "test")] == [30, 10, 20]
    assert splits["train"][0].shape[1:] == (3, 32, 32)
    # the tarball is class-sorted; the held-out images must not be the last class only
    assert len(set(splits["val"][1].tolist())) > 1
    assert len(set(splits["test"][1][:5].tolist())) > 1
    again = load_splits(tmp_path, "CIFAR-10", val_size=10, max_images=4)
    assert torch.equal(again["val"][1], splits["val"][1][:4])  # same split every run


RECIPE = """
model: {cfg}
train:
  batch_size: 8
  shift: 4
  flip: true
  val_size: 8
  dense_epochs: 1
  budget_epochs: 2
  optimizer: sgd
  momentum: 0.9
  weight_decay: 0.0005
  lr: 0.1
  phases:
    admm: {{lr: 0.01, schedule: constant}}
    default: {{lr: 0.01, schedule: cosine}}
methods:
  - name: admm-global
    method: admm
    ratio: 0.5
    projection: global
    epochs: 1
    stages: 1
    retrain_epochs: 1
    policy: {{first_cap: 0.5, last_cap: 0.95, backbone_end: 27}}
"""


@pytest.mark.slow  # 20 s: ResNet-56 through the script end to end; LeNet covers the default run
def test_resnet56_on_tiny_cifar10_dense_admm_eval(tmp_path):
    data = tmp_path / "cifar10"
    data.mkdir()
    _cifar_tarball(data / "cifar10_jpg_train.tar.gz", "train", 24, seed=0)
    _cifar_tarball(data / "cifar10_jpg_test.tar.gz", "test", 8, seed=1)
    recipe = tmp_path / "resnet56-tiny.yaml"
    recipe.write_text(RECIPE.format(cfg=REPO / "cfg" / "resnet56.cfg"))
    out = tmp_path / "out"
    env = {"YOLO_PRUNE_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out),
         "--recipe", str(recipe), "--threads", "1"],
        check=True, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    report = json.loads((out / "results.json").read_text())
    assert report["dense"]["title"] == "resnet56 / CIFAR-10"
    assert report["dense"]["train_images"] == 16
    (row,) = report["rows"]
    assert row["method"] == "admm-global" and not row.get("error")
    assert abs(row["sparsity"] - 0.5) < 1e-3  # the global ratio, exactly (up to rounding)
    assert row["layers"]["layers.0.conv.weight"]["sparsity"] <= 0.5 + 1e-9  # the stem's cap
    # yolo-prune eval on the saved sparse file sees what the script measured
    assert row["eval"]["top1"] == row["accuracy"]
    assert row["eval"]["sparsity"] == row["weights_sparsity"]
    assert (out / "admm-global.sparse").is_file() and (out / "results.md").is_file()
