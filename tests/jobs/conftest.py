"""A tiny detector and 8 real COCO images (labels folded onto its 2 classes) for job tests, and a
tiny LeNet-5 job on real MNIST with its uninterrupted run (the resume and DDP tests' reference)."""

from __future__ import annotations

from collections.abc import Callable
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


# LeNet-5 on the first 256 MNIST training images, 4 steps of 32 images per epoch (half an epoch:
# the batches' position is cut in mid-epoch), a checkpoint after every step: the dense model is
# trained here (1 epoch), then ADMM (2 epochs) and the masked retraining (2 epochs).
LENET_RECIPE = """
method: admm
ratio: 0.8
dense_epochs: 1
refit: 0
train: {batch_size: 32, optimizer: sgd, lr: 0.05, shift: 1, val_size: 64, max_images: 256,
        steps_per_epoch: 4, checkpoint_every: 1}
phases:
  admm: {schedule: constant}
methods:
  - {name: admm, method: admm, epochs: 2, stages: 1, rho: 0.01, retrain_epochs: 2,
     targets: {protect: none}}
"""


@pytest.fixture(scope="session")
def lenet_args(shared_data, repo_cfg) -> Callable[..., list[str]]:
    """``lenet_args(recipe, out, *extra)``: the ``yolo-prune prune`` arguments of a LeNet-5
    job on the real MNIST."""

    def args(recipe: Path, out: Path, *extra: str) -> list[str]:
        return ["prune", "--cfg", str(repo_cfg / "lenet5.cfg"), "--data",
                str(shared_data / "mnist"), "--recipe", str(recipe), "--out", str(out),
                "--no-latency", "--no-deploy", "--no-progress", *extra]  # fmt: skip

    return args


@pytest.fixture(scope="session")
def lenet_job(lenet_args, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny LeNet-5 job's recipe file and the output folder of its uninterrupted run."""
    from yolo_prune.cli.main import main

    root = tmp_path_factory.mktemp("lenet_job")
    recipe = root / "lenet5.yaml"
    recipe.write_text(LENET_RECIPE)
    out = root / "uninterrupted"
    assert main(lenet_args(recipe, out)) == 0
    return recipe, out
