"""``yolo-prune info`` and the CLI's error contract (one line, exit 2, --debug traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from yolo_prune.cli.main import main


def test_info_json_totals(repo_cfg, capsys):
    assert main(["info", str(repo_cfg / "yolov4.cfg"), "--size", "608", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 64_363_101
    assert out["bflops"] == pytest.approx(128.459, rel=0.01)


def test_info_table_has_a_row_per_layer(repo_cfg, capsys):
    assert main(["info", str(repo_cfg / "yolov4-tiny.cfg")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == 38
    assert "416x416x3 -> 208x208x32" in rows[0]
    assert lines[-1].startswith("input 416x416x3: 38 layers, 6,056,606 parameters, 6.910 BFLOPs")


@pytest.mark.parametrize(
    ("cfg_text", "message"),
    [
        ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=8\nsize=3\nactivation=leakyy\n",
         "bad.cfg:8: [convolutional] activation=leakyy: expected one of linear, leaky"),
        ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=8\nsize=3\n[shortcut]\nfrom=4\n",
         "bad.cfg:9: [shortcut] from=4 refers to layer 4, but this is layer 1"),
        ("[net]\nwidth=32\nheight=32\nchannels=3\n[maxpol]\n", "bad.cfg:5: unknown section [maxpol]"),
    ],
)  # fmt: skip
def test_bad_cfg_is_one_line_exit_2(cfg_text, message, tmp_path, capsys):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(cfg_text)
    assert main(["info", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.slow  # 13 s of subprocesses; in-process tests check the exit statuses
def test_console_script_exit_status_and_debug(tmp_path):
    missing = tmp_path / "missing.cfg"
    proc = subprocess.run([sys.executable, "-m", "yolo_prune.cli.main", "info", str(missing)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "yolo-prune info: error: missing.cfg: no such cfg file; check the path\n"
    proc = subprocess.run([sys.executable, "-m", "yolo_prune.cli.main", "--debug", "info", str(missing)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_info_checks_weights_fit(shared_data, tmp_path, capsys):
    cfg = shared_data / "cfg" / "yolov3-tiny.cfg"
    weights = shared_data / "weights" / "yolov3-tiny.weights"
    assert main(["info", str(cfg), "--weights", str(weights), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nonzero_params"] > 8_800_000 and out["header"][:2] == [0, 2]
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[:-400])
    assert main(["info", str(cfg), "--weights", str(short)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "short.weights: 100 floats too few for the network (8,858,634 of 8,858,734)" in err
    header = tmp_path / "header.weights"
    header.write_bytes(b"GIF89a" + weights.read_bytes()[6:100])
    assert main(["info", str(cfg), "--weights", str(header)]) == 2
    assert "header.weights: bad header" in capsys.readouterr().err
