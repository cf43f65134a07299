"""``yolo-prune bench``: several models timed side by side, one table and one JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from yolo_prune.cli.main import main
from yolo_prune.darknet import Darknet
from yolo_prune.export.darknet import export_darknet

TINY = Path(__file__).resolve().parents[1] / "prune" / "tiny_detector.cfg"


def test_dense_and_shrunk_are_timed_in_every_runtime(tmp_path, capsys):
    torch.manual_seed(0)
    dense = Darknet.from_cfg(TINY, size=64)
    dense.save_weights(tmp_path / "dense.weights")
    export_darknet(dense, tmp_path / "s.cfg", tmp_path / "s.weights")  # cfg + weights pair
    out = tmp_path / "t.json"
    code = main(["bench", "--model", f"dense={TINY}:{tmp_path / 'dense.weights'}",
                 "--model", f"copy={tmp_path / 's.cfg'}:{tmp_path / 's.weights'}",
                 "--size", "64", "--rounds", "1", "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "| dense |" in printed and "| copy |" in printed and "avx" in printed.lower()
    times = json.loads(out.read_text())["ms"]
    assert set(times) == {"dense", "copy"}
    assert all(isinstance(times[m]["torch"], float) and times[m]["torch"] > 0 for m in times)


def test_a_malformed_model_spec_is_one_line(capsys):
    assert main(["bench", "--model", "dense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected NAME=CFG:WEIGHTS or NAME=FILE" in err


def test_a_model_at_a_smaller_input_is_timed_beside_the_others(tmp_path):
    # the same network written at 64 and at 32 pixels: each is fed its own input size
    torch.manual_seed(0)
    dense = Darknet.from_cfg(TINY, size=64)
    export_darknet(dense, tmp_path / "d64.cfg", tmp_path / "d64.weights")
    small = Darknet.from_cfg(TINY, size=32)
    small.load_state_dict(dense.state_dict())
    export_darknet(small, tmp_path / "d32.cfg", tmp_path / "d32.weights")
    out = tmp_path / "t.json"
    code = main(["bench", "--model", f"at64={tmp_path / 'd64.cfg'}:{tmp_path / 'd64.weights'}",
                 "--model", f"at32={tmp_path / 'd32.cfg'}:{tmp_path / 'd32.weights'}",
                 "--rounds", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    times = json.loads(out.read_text())["ms"]
    assert all(isinstance(times[m]["torch"], float) and times[m]["torch"] > 0 for m in times)
