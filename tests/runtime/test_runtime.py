"""The three runtimes compute the same detections; ``.onnx`` files are run, scored and refused
as a user would meet them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_prune.cli.main import main
from yolo_prune.darknet import Darknet
from yolo_prune.errors import ConfigError, WeightsError
from yolo_prune.export.onnx import export_onnx, read_metadata
from yolo_prune.runtime import build_runtime, load_onnx_model

pytest.importorskip("onnxruntime")

MISH_CFG = """
[net]
width=64
height=64
channels=3
letter_box=1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish

[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""


@pytest.fixture(scope="module")
def fastest(shared_data: Path) -> Darknet:
    """The real COCO-trained Yolo-Fastest 1.1 XL at 320."""
    model = Darknet.from_cfg(shared_data / "cfg" / "yolo-fastest-1.1-xl.cfg", size=320)
    model.load_weights(shared_data / "weights" / "yolo-fastest-1.1-xl.weights")
    return model.eval()


@pytest.fixture(scope="module")
def dog(shared_data: Path, fastest: Darknet) -> torch.Tensor:
    import cv2

    from yolo_prune.detect import preprocess

    x, _ = preprocess([cv2.imread(str(shared_data / "images" / "dog.jpg"))], 320, letterbox=False)
    return x


@pytest.mark.parametrize("runtime", ["onnxruntime", "opencv"])
def test_every_runtime_gives_our_rows(fastest, dog, runtime):
    ours = fastest(dog)
    other = build_runtime(fastest, runtime).model
    assert other.input_shape == (3, 320, 320) and other.num_classes == 80
    rows = other(dog)
    assert rows.shape == ours.shape
    # Rows may come in another order (OpenCV: cell before anchor); compare the confident ones
    # matched by box centre.
    for row in ours[0][ours[0, :, 4] > 0.3]:
        d = (rows[0, :, :2] - row[:2]).abs().sum(1)
        match = rows[0, int(d.argmin())]
        torch.testing.assert_close(match, row, rtol=1e-3, atol=2e-3)


def test_auto_keeps_the_fastest_it_timed(fastest):
    choice = build_runtime(fastest, "auto", seconds=0.2)
    assert set(choice.latency_ms) == {"torch", "onnxruntime", "opencv"}
    assert choice.name == min(choice.latency_ms, key=choice.latency_ms.get)
    assert getattr(choice.model, "runtime_name", "torch") == choice.name


def test_auto_on_a_gpu_device_is_torch_and_other_runtimes_are_refused(fastest):
    with pytest.raises(ConfigError, match="runs on the CPU; use --device cpu"):
        build_runtime(fastest, "onnxruntime", device="cuda")


@pytest.mark.parametrize("form", ["exp", "node", "softplus"])
def test_every_mish_form_matches_torch(tmp_path, form):
    model = Darknet.from_cfg_text(MISH_CFG).eval()
    path = tmp_path / "mish.onnx"
    export_onnx(model, path, input_shape=model.input_shape, names=["cat", "dog"], opset=18,
                mish=form)  # fmt: skip
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Mish") == (2 if form == "node" else 0)
    assert ops.count("Softplus") == (2 if form == "softplus" else 0)
    if form == "exp":  # the default: one Exp per mish layer (plus the decode's), no Tanh
        assert "Tanh" not in ops and ops.count("Exp") >= 3
    x = torch.randn(2, 3, 64, 64) * 8  # large inputs reach the clamp at 20
    runtime = load_onnx_model(path)
    torch.testing.assert_close(runtime(x), model(x), rtol=1e-4, atol=1e-4)
    meta = read_metadata(path)
    assert meta["task"] == "detect" and meta["input_shape"] == "3,64,64"
    assert (runtime.num_classes, runtime.letter_box, runtime.names) == (2, True, ["cat", "dog"])


def test_an_onnx_file_is_scored_by_eval_as_its_source_is(fastest, shared_data, tmp_path):
    onnx_path = tmp_path / "fastest.onnx"
    export_onnx(fastest, onnx_path, input_shape=fastest.input_shape)
    weights = tmp_path / "fastest.weights"
    fastest.save_weights(weights)
    cfg = shared_data / "cfg" / "yolo-fastest-1.1-xl.cfg"
    data = ["--data", str(shared_data / "coco128"), "--batch-size", "16", "--no-latency"]
    assert (
        main(["eval", "--weights", str(onnx_path), *data, "--out", str(tmp_path / "o.json")]) == 0
    )
    assert main(["eval", "--cfg", str(cfg), "--weights", str(weights), "--size", "320",
                 "--runtime", "torch", *data, "--out", str(tmp_path / "t.json")]) == 0  # fmt: skip
    onnx_m = json.loads((tmp_path / "o.json").read_text())
    torch_m = json.loads((tmp_path / "t.json").read_text())
    assert onnx_m["runtime"] == "onnxruntime" and torch_m["runtime"] == "torch"
    assert onnx_m["images"] == torch_m["images"] == 64
    assert abs(onnx_m["AP50"] - torch_m["AP50"]) < 0.002 and torch_m["AP50"] > 0.3
    assert onnx_m["gflops"] == pytest.approx(torch_m["gflops"], rel=1e-6)
    assert onnx_m["fps"] is None and torch_m["fps"] is None  # --no-latency: nothing timed


def test_detect_runs_an_onnx_file_without_a_cfg(fastest, shared_data, tmp_path):
    onnx_path = tmp_path / "fastest.onnx"
    export_onnx(fastest, onnx_path, input_shape=fastest.input_shape)
    out = tmp_path / "out"
    src = shared_data / "images" / "dog.jpg"
    assert (
        main(["detect", "--weights", str(onnx_path), "--source", str(src), "--out", str(out)]) == 0
    )
    found = {r["category"] for r in json.loads((out / "detections.json").read_text())}
    assert "dog" in found


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        ("text", [], "not an ONNX model"),
        ("classifier", [], "is not a detector's [batch, boxes, 5 + classes]"),
        ("detector", ["--runtime", "opencv"], "runs in onnxruntime only"),
        ("detector", ["--size", "416"], "runs at 320x320 only"),
    ],
    ids=["not-onnx", "not-a-detector", "opencv", "size"],
)
def test_bad_onnx_input_is_one_line(fastest, repo_cfg, shared_data, tmp_path, capsys, make,
                                    extra, message):  # fmt: skip
    path = tmp_path / "model.onnx"
    if make == "text":
        path.write_text("this is not a model\n")
    elif make == "classifier":
        lenet = Darknet.from_cfg(repo_cfg / "lenet5.cfg").eval()
        export_onnx(lenet, path, input_shape=lenet.input_shape)
    else:
        export_onnx(fastest, path, input_shape=fastest.input_shape)
    src = str(shared_data / "images" / "dog.jpg")
    code = main(["detect", "--weights", str(path), "--source", src, "--out", str(tmp_path / "o"),
                 *extra])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("yolo-prune detect: error: ") and message in err[0]
    assert not (tmp_path / "o").exists()


def test_load_onnx_model_refuses_a_non_model(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsError, match="x.onnx: not an ONNX model"):
        load_onnx_model(path)
