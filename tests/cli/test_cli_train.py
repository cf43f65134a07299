"""``yolo-prune train``: a run, a resume that has nothing left to do, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from yolo_prune.cli.main import main
from yolo_prune.engine.checkpoint import load_checkpoint

TINY_CFG = Path(__file__).resolve().parents[1] / "prune" / "tiny_detector.cfg"


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory) -> Path:
    """4 coco128 train images with labels folded onto 2 classes."""
    root = tmp_path_factory.mktemp("cli_train_data")
    src = shared_data / "coco128"
    for sub in ("images/train", "labels/train"):
        (root / sub).mkdir(parents=True)
    for image in sorted((src / "images" / "train2017").glob("*.jpg"))[:4]:
        shutil.copy(image, root / "images" / "train" / image.name)
        lines = (src / "labels" / "train2017" / f"{image.stem}.txt").read_text().splitlines()
        folded = [f"{int(s.split()[0]) % 2} {' '.join(s.split()[1:])}" for s in lines if s.strip()]
        (root / "labels" / "train" / f"{image.stem}.txt").write_text("\n".join(folded) + "\n")
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--cfg", str(TINY_CFG), "--data", str(data), "--epochs", "2",
            "--out", str(out), "--size", "64", "--batch-size", "2", "--no-progress", *extra]  # fmt: skip


def test_train_then_resume_a_finished_run(data, tmp_path, capsys):
    assert main(_args(data, tmp_path, "--mosaic", "0.5")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[0] == "{"]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    before = (tmp_path / "final.weights").read_bytes()
    assert main(_args(data, tmp_path, "--mosaic", "0.5", "--resume")) == 0
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert (tmp_path / "final.weights").read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--size", "50"], "size=50; expected a multiple of 32"),
        (["--lr", "-1"], "lr=-1.0; expected a positive number"),
        (["--batch-size", "8"], "make no full step of batch_size 8"),
        (["--mosaic", "2"], "mosaic=2.0; expected a probability"),
    ],
)
def test_bad_options_are_one_line_errors(data, tmp_path, capsys, extra, match):
    assert main(_args(data, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_missing_dataset_is_named(tmp_path, capsys):
    assert main(_args(tmp_path / "nope", tmp_path / "out")) == 2
    assert "nope: no such dataset folder" in capsys.readouterr().err
