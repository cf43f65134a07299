"""Exports: a shrunk model as Darknet cfg+weights (OpenCV and we load it) and as ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_prune.cli.main import main
from yolo_prune.darknet import Darknet
from yolo_prune.darknet.channels import build_channel_map
from yolo_prune.darknet.surgery import fold_pruned_, shrink
from yolo_prune.export import export_darknet, export_onnx


@pytest.fixture()
def shrunk_tiny(repo_cfg, randomize):
    model = randomize(Darknet.from_cfg(repo_cfg / "yolov4-tiny.cfg"))
    cmap = build_channel_map(model.graph)
    pruned = {g.id for g in cmap.groups if g.prunable and g.id % 2 == 0}
    return shrink(fold_pruned_(model, pruned, cmap), pruned, cmap).eval()


def test_darknet_export_loads_in_opencv_and_in_our_loader(shrunk_tiny, tmp_path, reference):
    cfg, weights = tmp_path / "small.cfg", tmp_path / "small.weights"
    export_darknet(shrunk_tiny, cfg, weights)
    again = Darknet.from_cfg(cfg)
    again.load_weights(weights)
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), shrunk_tiny(x))
    box_err, obj_err, _, _ = reference(shrunk_tiny, cfg, weights, x)
    assert box_err < 1e-3 and obj_err < 1e-3


def test_onnx_export_runs_in_onnxruntime_with_dynamic_batch(shrunk_tiny, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "small.onnx"
    export_onnx(shrunk_tiny, path, input_shape=shrunk_tiny.input_shape)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 416, 416)
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = shrunk_tiny(x).numpy()
    assert got.shape == want.shape == (3, 2535, 85)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_export_cli(shared_data, tmp_path, capsys):
    cfg = shared_data / "cfg" / "yolov3-tiny.cfg"
    weights = shared_data / "weights" / "yolov3-tiny.weights"
    assert main(["export", "--cfg", str(cfg), "--weights", str(weights), "--format", "darknet",
                 "--out", str(tmp_path / "copy")]) == 0  # fmt: skip
    assert (tmp_path / "copy.weights").read_bytes() == weights.read_bytes()
    assert main(["export", "--cfg", str(cfg), "--weights", str(weights), "--format", "tflite",
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "unknown export format 'tflite'; choose one of: darknet, onnx" in capsys.readouterr().err
