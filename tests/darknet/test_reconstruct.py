"""Least-squares refit of a shrunk Darknet to its dense original on calibration images."""

from __future__ import annotations

import copy

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.darknet.channels import build_channel_map
from yolo_prune.darknet.reconstruct import reconstruct_
from yolo_prune.darknet.surgery import fold_pruned_, shrink
from yolo_prune.utils.linalg import NormalEquations

CFG = (
    "[net]\nwidth=16\nheight=16\nchannels=3\n"
    "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\npad=1\nactivation=leaky\n"
    "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\npad=1\nactivation=leaky\n"
    "[shortcut]\nfrom=-2\nactivation=linear\n"
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=1\nactivation=leaky\n"
    "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
)


def test_normal_equations_recover_an_exact_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 7, generator=g)
    w, b = torch.randn(3, 7, generator=g), torch.randn(3, generator=g)
    eq = NormalEquations(7, 3)
    eq.add_(x[:200], x[:200] @ w.T + b)
    eq.add_(x[200:], x[200:] @ w.T + b)
    got_w, got_b = eq.solve(torch.zeros(3, 7), torch.zeros(3), ridge=1e-9)
    torch.testing.assert_close(got_w, w, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_b, b, atol=1e-4, rtol=0)
    # a strong ridge pulls towards the prior, not towards zero
    far_w, far_b = eq.solve(w, b, ridge=1e6)
    torch.testing.assert_close(far_w, w, atol=1e-4, rtol=0)


def test_refit_brings_the_shrunk_model_back_towards_the_dense_one(randomize):
    dense = randomize(Darknet.from_cfg_text(CFG)).eval()
    cmap = build_channel_map(dense.graph)
    prunable = [g for g in cmap.groups if g.prunable]
    pruned = {g.id for g in prunable[::3]}  # a third of the groups, the shortcut's among them
    small = shrink(fold_pruned_(copy.deepcopy(dense), pruned, cmap), pruned, cmap).eval()
    calib = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    test = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = dense(test)
        before = (small(test) - want).pow(2).mean()
        reconstruct_(small, dense, calib, pruned, cmap, ridge=1e-4)
        after = (small(test) - want).pow(2).mean()
    assert after < 0.5 * before
    # nothing pruned: the refit finds the weights it started from
    same = copy.deepcopy(dense)
    with torch.no_grad():
        reconstruct_(same, dense, calib, set(), cmap, ridge=1e-4)
        torch.testing.assert_close(same(test), want, atol=1e-3, rtol=1e-3)


def _prune_refit_detect(shared_data, cfg, weights, size, ratio, conf):
    """Real COCO weights, ``ratio`` of the channels removed by channel-group L1 (conservative
    policy, every layer at most half), shrunk, refitted on 16 coco128 train images; no
    fine-tuning. Returns the dog scores in dog.jpg."""
    import cv2

    from yolo_prune.detect.detector import Detector
    from yolo_prune.detect.preprocess import preprocess
    from yolo_prune.prune.base import prepare_targets, target_weights
    from yolo_prune.prune.masks import apply_masks_
    from yolo_prune.prune.policy import ConservativePolicy
    from yolo_prune.prune.structured import build_projection
    from yolo_prune.prune.targets import TargetConfig

    dense = Darknet.from_cfg(shared_data / "cfg" / cfg, size=size)
    dense.load_weights(shared_data / "weights" / weights)
    dense.eval()
    model = copy.deepcopy(dense)
    policy = ConservativePolicy(first_cap=0.2, last_cap=0.5)
    names, caps = prepare_targets(model, TargetConfig(), policy)
    project = build_projection(model, names, "group", criterion="l1")
    apply_masks_(model, project(target_weights(model, names), ratio, caps=caps))
    pruned = model.zero_channel_groups()
    small = shrink(fold_pruned_(model, pruned), pruned)
    files = sorted((shared_data / "coco128" / "images" / "train2017").glob("*.jpg"))[:16]
    letterbox = bool(dense.sections[0].get("letter_box", 0))
    calib, _ = preprocess([cv2.imread(str(f)) for f in files], size, letterbox=letterbox)
    reconstruct_(small, dense, calib.contiguous(), pruned, ridge=1e-3)
    assert small.graph.params < dense.graph.params
    image = cv2.imread(str(shared_data / "images" / "dog.jpg"))
    found = Detector(small, conf=conf, optimize=False)([image])[0]
    dog = 16  # COCO-80 index of "dog"
    return [float(s) for s, lab in zip(found.scores, found.labels, strict=True) if lab == dog]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cfg", "weights", "size", "ratio", "conf"),
    [
        ("yolo-fastest-1.1-xl.cfg", "yolo-fastest-1.1-xl.weights", 320, 0.2, 0.25),
        ("yolov3-tiny.cfg", "yolov3-tiny.weights", 416, 0.15, 0.2),
        pytest.param(
            "yolo-fastest-1.1-xl.cfg",
            "yolo-fastest-1.1-xl.weights",
            320,
            0.3,
            0.25,
            marks=pytest.mark.xfail(reason="issue 6 acceptance 4 not reached: dog lost at 30%"),
        ),
        pytest.param(
            "yolov3-tiny.cfg",
            "yolov3-tiny.weights",
            416,
            0.3,
            0.25,
            marks=pytest.mark.xfail(reason="issue 6 acceptance 4 not reached: dog lost at 30%"),
        ),
    ],
)
def test_real_detector_pruned_and_refitted_still_finds_the_dog(
    cfg, weights, size, ratio, conf, shared_data
):
    assert _prune_refit_detect(shared_data, cfg, weights, size, ratio, conf)
