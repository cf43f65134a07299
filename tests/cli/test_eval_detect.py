"""``yolo-prune eval`` on a detection dataset: COCO AP and the size/speed figures as JSON."""

from __future__ import annotations

import json

import pytest

from yolo_prune.cli.main import main


def test_eval_detector_writes_the_issue_keys(shared_data, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main([
        "eval", "--cfg", str(shared_data / "cfg" / "yolov3-tiny.cfg"),
        "--weights", str(shared_data / "weights" / "yolov3-tiny.weights"),
        "--data", str(shared_data / "coco128"), "--size", "320", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    m = json.loads(out.read_text())
    for key in ("AP", "AP50", "AP75", "params", "nonzero_params", "sparsity", "gflops", "fps"):
        assert key in m
    assert m["task"] == "detect" and m["split"] == "val2017"
    assert 0.2 < m["AP50"] < 0.5 and m["AP"] < m["AP50"]
    assert m["params"] == m["nonzero_params"] == 8_852_366 and m["sparsity"] == 0.0
    assert m["gflops"] == pytest.approx(5.571 * (320 / 416) ** 2, rel=0.01)
    assert "AP / AP50 / AP75" in capsys.readouterr().out


def test_eval_classifier_cfg_on_detection_data_is_refused(shared_data, repo_cfg, tmp_path, capsys):
    from yolo_prune.darknet import Darknet

    weights = tmp_path / "lenet.weights"
    Darknet.from_cfg(repo_cfg / "lenet5.cfg").save_weights(weights)
    code = main(["eval", "--cfg", str(repo_cfg / "lenet5.cfg"), "--weights", str(weights),
                 "--data", str(shared_data / "coco128")])  # fmt: skip
    assert code == 2
    assert "no [yolo] layer, but --data is a detection dataset" in capsys.readouterr().err
