"""scripts/mask_overlap.py: the Jaccard index of two prune runs' zero sets, per layer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.jobs.prune import save_pruned

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mask_overlap.py"
TINY_CFG = ROOT / "tests" / "prune" / "tiny_detector.cfg"


def _run(folder: Path, zero: dict[str, slice]) -> Path:
    torch.manual_seed(0)
    model = Darknet.from_cfg(TINY_CFG, size=64)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, filters in zero.items():
            params[name][filters] = 0
    folder.mkdir()
    save_pruned(model, folder, meta={"method": "test"})
    return folder


def test_overlap_counts_shared_zeros_per_layer(tmp_path):
    model = Darknet.from_cfg(TINY_CFG, size=64)
    name = next(n for n, p in model.named_parameters() if n.endswith("conv.weight"))
    # a: filters 0-3 zero; b: filters 2-5 zero -> 2 of the 6 zero filters shared
    a = _run(tmp_path / "a", {name: slice(0, 4)})
    b = _run(tmp_path / "b", {name: slice(2, 6)})
    out = tmp_path / "overlap.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--a", str(a), "--b", str(b),
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert list(figures["layers"]) == [name]  # layers neither run pruned are left out
    assert figures["layers"][name]["jaccard"] == pytest.approx(2 / 6)
    assert figures["jaccard"] == pytest.approx(2 / 6)
    same = subprocess.run([sys.executable, str(SCRIPT), "--a", str(a), "--b", str(a)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert "all layers: Jaccard 1.0000" in same.stdout


def test_a_folder_without_a_run_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--a", str(tmp_path), "--b", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "no pruned.sparse" in done.stderr
