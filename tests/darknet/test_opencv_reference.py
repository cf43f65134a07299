"""Our forward pass and .weights writer against OpenCV's independent Darknet importer."""

from __future__ import annotations

import re

import pytest
import torch

from yolo_prune.darknet import Darknet

TOL = 1e-3  # per-row relative error allowed on boxes and objectness

FAMILY = [
    ("yolov4.cfg", 320),  # every yolov4 layer kind at a third of 608's cost (10 s there)
    pytest.param("yolov4.cfg", 608, marks=pytest.mark.slow),
    ("yolov4-tiny.cfg", 416),
    # yolov3 and yolov3-spp add minutes of CPU and no layer kind yolov4 lacks: slow suite
    pytest.param("yolov3.cfg", 416, marks=pytest.mark.slow),
    ("yolov3-tiny.cfg", 416),
    pytest.param("yolov3-spp.cfg", 608, marks=pytest.mark.slow),
    ("yolo-fastest-1.1-xl.cfg", 320),
]


def _cfg_at_size(src, size, tmp_path):
    text = src.read_text()
    text = re.sub(r"(?m)^width=\d+", f"width={size}", text)
    text = re.sub(r"(?m)^height=\d+", f"height={size}", text)
    out = tmp_path / src.name
    out.write_text(text)
    return out


@pytest.mark.parametrize(("name", "size"), FAMILY)
def test_random_weights_match_opencv(name, size, repo_cfg, tmp_path, randomize, reference):
    cfg = _cfg_at_size(repo_cfg / name, size, tmp_path)
    model = randomize(Darknet.from_cfg(cfg))
    weights = tmp_path / "random.weights"
    model.save_weights(weights)
    x = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(1))
    box_err, obj_err, ours, ref = reference(model, cfg, weights, x)
    assert box_err < TOL and obj_err < TOL, (box_err, obj_err)
    # the comparison is not vacuous: objectness varies across rows
    assert ref[:, 4].max() - ref[:, 4].min() > 0.05


def test_comparison_catches_a_small_bug(repo_cfg, tmp_path, randomize, reference):
    """A 1% error on a ninth of layer 1's weights must fail the tolerance (yolov4-tiny)."""
    cfg = repo_cfg / "yolov4-tiny.cfg"
    model = randomize(Darknet.from_cfg(cfg))
    weights = tmp_path / "random.weights"
    model.save_weights(weights)
    with torch.no_grad():
        model.layers[1].conv.weight[:, :, 0, 0] *= 1.01
    x = torch.rand((1, 3, 416, 416), generator=torch.Generator().manual_seed(1))
    box_err, obj_err, _, _ = reference(model, cfg, weights, x)
    assert max(box_err, obj_err) > TOL


@pytest.mark.parametrize(
    ("cfg_name", "weights_name"),
    [
        ("yolov3-tiny.cfg", "yolov3-tiny.weights"),
        ("yolo-fastest-1.1-xl.cfg", "yolo-fastest-1.1-xl.weights"),
    ],
)
def test_real_weights_match_opencv(cfg_name, weights_name, shared_data, reference):
    import cv2

    cfg = shared_data / "cfg" / cfg_name
    weights = shared_data / "weights" / weights_name
    model = Darknet.from_cfg(cfg)
    model.load_weights(weights)
    _, h, w = model.input_shape
    img = cv2.imread(str(shared_data / "images" / "dog.jpg"))[:, :, ::-1]
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    box_err, obj_err, ours, ref = reference(model, cfg, weights, x)
    assert box_err < TOL and obj_err < TOL, (box_err, obj_err)
    # real weights see real objects: several confident rows
    assert (ref[:, 4] > 0.5).sum() >= 3
    # class scores agree where OpenCV reports them (it zeroes those under its threshold)
    mask = ref[:, 5:] > 0
    ours_scores = ours[:, 4:5] * ours[:, 5:]
    torch.testing.assert_close(
        torch.from_numpy(ours_scores[mask]),
        torch.from_numpy(ref[:, 5:][mask]),
        rtol=1e-3,
        atol=1e-5,
    )


def test_every_layer_kind_matches_opencv(tmp_path, randomize, reference):
    """Depthwise/grouped convs, swish/mish/relu/logistic, route groups, [sam],
    [scale_channels], [avgpool], odd maxpools, scale_x_y and new_coords heads."""
    from pathlib import Path

    cfg = Path(__file__).parent / "cfgs" / "zoo.cfg"
    model = randomize(Darknet.from_cfg(cfg))
    weights = tmp_path / "zoo.weights"
    model.save_weights(weights)
    x = torch.rand((1, 3, 96, 96), generator=torch.Generator().manual_seed(2))
    box_err, obj_err, _, ref = reference(model, cfg, weights, x)
    assert box_err < TOL and obj_err < TOL, (box_err, obj_err)
    assert ref[:, 4].max() - ref[:, 4].min() > 0.05
