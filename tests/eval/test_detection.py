"""``evaluate_detector``: AP checked by an independent pycocotools run, sizes, speed, options."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.errors import ConfigError
from yolo_prune.eval.detection import evaluate_detector, format_metrics, size_figures

cv2 = pytest.importorskip("cv2")
COCO = pytest.importorskip("pycocotools.coco").COCO
COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval


@pytest.fixture(scope="module")
def tiny(shared_data: Path) -> Darknet:
    model = Darknet.from_cfg(shared_data / "cfg" / "yolov3-tiny.cfg")
    model.load_weights(shared_data / "weights" / "yolov3-tiny.weights")
    return model


def independent_gt(root: Path, categories: list[int]) -> dict:
    """COCO ground truth for a YOLO txt split, written here without any project code."""
    images, annotations = [], []
    for image_path in sorted((root / "images" / "val2017").glob("*.jpg")):
        h, w = cv2.imread(str(image_path)).shape[:2]
        image_id = int(image_path.stem)
        images.append({"id": image_id, "file_name": image_path.name, "width": w, "height": h})
        label = root / "labels" / "val2017" / f"{image_path.stem}.txt"
        if not label.exists():
            continue
        for cls, cx, cy, bw, bh in np.loadtxt(label, ndmin=2):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[int(cls)],
                    "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                    "area": bw * w * bh * h,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c, "name": str(c)} for c in categories]
    return {"images": images, "annotations": annotations, "categories": cats}


def test_ap50_agrees_with_an_independent_pycocotools_run(tiny, shared_data, tmp_path):
    """Acceptance 2: the real yolov3-tiny at 416 on the 64 coco128 val images."""
    root = shared_data / "coco128"
    dets_path = tmp_path / "detections.json"
    metrics = evaluate_detector(
        tiny, root, size=416, latency=False, detections_path=dets_path, batch_size=8
    )
    # The category order comes from the COCO JSON of the train split, not from our constants.
    train = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(independent_gt(root, [c["id"] for c in train["categories"]])))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert metrics["images"] == 64 and metrics["annotations"] == len(gt.getAnnIds())
    assert abs(metrics["AP50"] - ev.stats[1]) <= 0.02
    assert abs(metrics["AP"] - ev.stats[0]) <= 0.02
    # yolov3-tiny's published COCO AP50 at 416 is 33.1; 64 images scatter around it.
    assert 0.2 < metrics["AP50"] < 0.5
    assert metrics["params"] == tiny.graph.params == 8_852_366
    assert metrics["sparsity"] == 0.0 and metrics["gflops"] == pytest.approx(tiny.graph.bflops)
    assert metrics["size"] == [416, 416] and metrics["fps"] is None


def test_size_figures_count_pruned_zeros(tmp_path, shared_data):
    model = Darknet.from_cfg(shared_data / "cfg" / "yolov3-tiny.cfg", size=416)
    model.load_weights(shared_data / "weights" / "yolov3-tiny.weights")
    dense = size_figures(model)
    with torch.no_grad():
        conv = model.layers[0].conv.weight  # 16x3x3x3 = 432 weights
        conv.view(-1)[:216] = 0
    f = size_figures(model)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = sum(w.numel() for w in convs)
    assert f["params"] == model.graph.params
    assert f["weights"] == weights and f["nonzero_weights"] == weights - 216
    assert f["sparsity"] == pytest.approx(216 / weights)
    assert f["nonzero_params"] == dense["nonzero_params"] - 216
    assert f["gflops"] == pytest.approx(model.graph.bflops)
    half = model.graph.layers[0].bflops / 2
    assert f["gflops_nonzero"] == pytest.approx(model.graph.bflops - half)


def test_evaluation_leaves_the_model_alone_and_times_it(tiny, shared_data):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    m = evaluate_detector(
        tiny,
        shared_data / "coco128",
        max_images=4,
        batch_size=2,
        latency_seconds=0.0,
        latency_runs=2,
    )
    assert m["images"] == 4 and m["size"] == [416, 416]
    assert m["fps"] > 0 and m["fps_batched"] > 0 and m["latency_ms"] > 0
    assert m["device"].startswith("cpu")
    assert not tiny.fused and tiny.training  # a fresh model is in training mode
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    for key in ("AP", "AP50", "AP75", "params", "nonzero_params", "sparsity", "gflops", "fps"):
        assert key in m
    json.dumps(m)  # JSON-ready
    table = format_metrics(m)
    assert f"{100 * m['AP50']:.2f}" in table and m["device"] in table


def test_bad_options(tiny, shared_data, tmp_path):
    with pytest.raises(ConfigError, match="batch_size 0"):
        evaluate_detector(tiny, shared_data / "coco128", batch_size=0)
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "val" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    from yolo_prune.data.yolo_txt import load_yolo_txt

    two_classes = load_yolo_txt(tmp_path, split="val", category_ids=[1, 2], names=["a", "b"])
    with pytest.raises(ConfigError, match="predicts 80 classes but .* has 2 categories"):
        evaluate_detector(tiny, two_classes, latency=False)
