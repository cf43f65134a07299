"""Structured pruning of channel groups at one global ratio, on a Darknet detector and a
torchvision ResNet, and the smoke test that a shrunk real detector still sees the dog."""

from __future__ import annotations

import pytest
import torch
import torchvision

from yolo_prune.darknet import Darknet
from yolo_prune.darknet.surgery import fold_pruned_, shrink
from yolo_prune.errors import PruneError
from yolo_prune.prune.structured import (
    filter_scores,
    model_channel_groups,
    project_channel_groups,
)
from yolo_prune.prune.targets import TargetConfig, select_targets


def _prune_groups(model, ratio, caps=None, criterion="l2"):
    names = select_targets(model, TargetConfig())
    weights = {n: model.get_parameter(n) for n in names}
    groups = model_channel_groups(model, names)
    scores = filter_scores(model, names, criterion)
    masks = project_channel_groups(weights, groups, ratio, caps=caps, scores=scores)
    with torch.no_grad():
        for n, m in masks.items():
            weights[n].mul_(m)
    return groups, masks


def test_groups_on_a_darknet_detector_remove_whole_groups(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov4-tiny.cfg")
    groups, masks = _prune_groups(model, 0.3)
    total = sum(len(g) for g in groups)
    removed = [g for g in groups if not masks[g[0][0]][g[0][1]].any()]
    assert sum(len(g) for g in removed) >= round(0.3 * total)
    assert sum(len(g) for g in removed) <= round(0.3 * total) + max(len(g) for g in groups)
    for g in removed:  # every filter of a removed group is gone, and nothing else
        assert all(not masks[n][c].any() for n, c in g)
    removed_filters = sum(int((~m).reshape(m.shape[0], -1).all(1).sum()) for m in masks.values())
    assert removed_filters == sum(len(g) for g in removed)
    # the Darknet side sees exactly those groups as prunable-and-zero
    assert len(model.zero_channel_groups()) == len(removed)
    assert "layers.29.conv.weight" not in masks  # the head stays dense


def test_groups_on_a_torchvision_resnet_are_single_filters():
    model = torchvision.models.resnet18(num_classes=10)
    groups, masks = _prune_groups(model, 0.5)
    assert all(len(g) == 1 for g in groups)
    removed = sum(int((~m).reshape(m.shape[0], -1).all(1).sum()) for m in masks.values())
    assert removed == round(0.5 * len(groups))


def test_caps_hold_and_an_impossible_ratio_is_refused(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg")
    names = select_targets(model, TargetConfig())
    caps = {n: (0.1 if n == names[0] else 1.0) for n in names}
    _, masks = _prune_groups(model, 0.5, caps=caps)
    first = masks[names[0]]
    assert int((~first).reshape(first.shape[0], -1).all(1).sum()) <= 1  # floor(0.1 * 16)
    weights = {n: model.get_parameter(n) for n in names}
    groups = model_channel_groups(model, names)
    with pytest.raises(PruneError, match=r"the per-layer caps allow removing only"):
        project_channel_groups(weights, groups, 0.9, caps=dict.fromkeys(names, 0.2))
    with pytest.raises(PruneError, match=r"outside \[0, 1\)"):
        project_channel_groups(weights, groups, 1.0)


@pytest.mark.parametrize(
    ("cfg", "weights", "size"),
    [
        ("yolo-fastest-1.1-xl.cfg", "yolo-fastest-1.1-xl.weights", 320),
        ("yolov3-tiny.cfg", "yolov3-tiny.weights", 416),
    ],
)
def test_real_detector_shrunk_sees_what_the_masked_one_sees(cfg, weights, size, shared_data):
    """Surgery keeps the semantics on real weights: the shrunk model finds the dog, with the
    masked model's boxes and scores. (2% of channels, no fine-tuning: these COCO models lose
    the dog from about 10% on without fine-tuning, whatever the criterion; see the notes.)"""
    import cv2

    from yolo_prune.detect.detector import Detector

    model = Darknet.from_cfg(shared_data / "cfg" / cfg, size=size)
    model.load_weights(shared_data / "weights" / weights)
    _prune_groups(model, 0.02, criterion="l2")
    pruned = model.zero_channel_groups()
    masked = fold_pruned_(model.eval(), pruned)
    small = shrink(masked, pruned).eval()
    assert small.graph.params < model.graph.params
    image = cv2.imread(str(shared_data / "images" / "dog.jpg"))
    want = Detector(masked, conf=0.25, optimize=False)([image])[0]
    got = Detector(small, conf=0.25, optimize=False)([image])[0]
    dog = 16  # COCO-80 index of "dog"
    assert dog in got.labels.tolist()
    assert got.labels.tolist() == want.labels.tolist()
    torch.testing.assert_close(got.boxes, want.boxes, atol=0.05, rtol=1e-4)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=1e-4)
