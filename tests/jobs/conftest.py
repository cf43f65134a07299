"""A tiny detector and 8 real COCO images (labels folded onto its 2 classes) for job tests."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_CFG = Path(__file__).resolve().parents[1] / "prune" / "tiny_detector.cfg"

# Recipe for the tiny detector: one epoch per phase, 64 px, deterministic.
TINY_RECIPE = """
size: 64
ratio: 0.5
method: admm
train: {batch_size: 4, lr: 0.001, warmup_epochs: 0.0, deterministic: true, ema: false}
methods:
  - {name: admm, method: admm, epochs: 1, stages: 1, rho: 1.0, retrain_epochs: 1}
  - {name: magnitude, method: magnitude, epochs: 1}
  - {name: soft-filter, method: soft-filter, epochs: 1, retrain_epochs: 1, decorrelation: 0.0}
"""


@pytest.fixture(scope="session")
def tiny_dataset(coco8_two_classes) -> Path:
    return coco8_two_classes


@pytest.fixture(scope="session")
def tiny_cfg() -> Path:
    return TINY_CFG


@pytest.fixture(scope="session")
def tiny_recipe_text() -> str:
    return TINY_RECIPE


@pytest.fixture
def tiny_recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Random (seeded) weights of the tiny detector, BN statistics made plausible."""
    import torch

    from yolo_prune.darknet import Darknet

    torch.manual_seed(0)
    model = Darknet.from_cfg(TINY_CFG)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("tiny_weights") / "tiny.weights"
    model.save_weights(path)
    return path
