"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
def repo_cfg() -> Path:
    """The project's ``cfg/`` folder."""
    return REPO / "cfg"
