"""Models every pruning test runs on: a Darknet detector, a Darknet classifier, a torchvision
ResNet. The engine must treat them alike, so tests take a ``case`` and never branch on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from yolo_prune.darknet import Darknet

HERE = Path(__file__).parent


@dataclass
class Case:
    """A model with an input batch and a loss to take training steps with."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # one sample, (C, H, W)

    def model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build()

    @staticmethod
    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The loss to train any case with (see :func:`toy_loss`)."""
        return toy_loss(model, batch)

    def batch(self, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, *self.input_shape, generator=g), torch.randint(
            0, 10, (n,), generator=g
        )


def toy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A loss for any of the cases: cross-entropy for [B, K] outputs, else a squared norm."""
    x, y = batch
    out = model(x)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == 10:
        return F.cross_entropy(out, y)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return sum((o - 0.5).pow(2).mean() for o in outs)


CASES = {
    "darknet-detector": Case(
        "darknet-detector", lambda: Darknet.from_cfg(HERE / "tiny_detector.cfg"), (3, 32, 32)
    ),
    "darknet-classifier": Case(
        "darknet-classifier", lambda: Darknet.from_cfg(HERE / "tiny_classifier.cfg"), (1, 16, 16)
    ),
    # torchvision's ResNet class with one BasicBlock per stage (ResNet-10): the same code
    # as resnet18, a third of the time per step.
    "resnet": Case("resnet", lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), (3, 32, 32)),
}


@pytest.fixture
def flush_denormals():
    """Denormal floats make CPU training steps up to 10x slower; flush them, then restore.

    Opt-in (``pytestmark = pytest.mark.usefixtures("flush_denormals")``): it is process-wide
    state, and hypothesis refuses to draw floats while it is on.
    """
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    """Each of the three models in turn."""
    return CASES[request.param]


@pytest.fixture(params=["darknet-detector", "resnet"])
def case2(request: pytest.FixtureRequest) -> Case:
    """The Darknet detector and the torchvision ResNet (for the slower tests)."""
    return CASES[request.param]


def take_steps(
    model: nn.Module,
    case: Case,
    optimizer: torch.optim.Optimizer,
    hooks,
    *,
    steps: int = 3,
) -> None:
    """A few optimizer steps through the real engine, with ``hooks``."""
    from yolo_prune.engine import Trainer

    batches = [case.batch(seed=i) for i in range(steps)]
    Trainer(model, optimizer, toy_loss, hooks=hooks).fit(batches, epochs=1)


@pytest.fixture
def detector() -> Case:
    return CASES["darknet-detector"]


@pytest.fixture
def classifier() -> Case:
    return CASES["darknet-classifier"]


@pytest.fixture
def resnet() -> Case:
    return CASES["resnet"]
