"""The YOLO loss: anchor/cell assignment, ignore threshold, and consistency with decoding."""

from __future__ import annotations

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.detect.loss import YoloLoss


@pytest.fixture(scope="module")
def tiny(repo_cfg):
    return Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=320)


def _raw(model, batch=1, fill=-8.0):
    """Raw head tensors with every objectness/class logit very negative."""
    model.train()
    with torch.no_grad():
        heads = model(torch.zeros(batch, 3, 320, 320))
    return [torch.full_like(h, fill) for h in heads]


def test_truth_goes_to_best_anchor_and_its_cell(tiny):
    loss = YoloLoss.from_model(tiny)
    # yolov3-tiny anchors: 10,14 23,27 37,58 81,82 135,169 344,319; head 0 masks 3,4,5 (stride
    # 32), head 1 masks 1,2,3 (stride 16, as the real weights were trained): anchor 3 is in both
    target = torch.tensor([[0, 7, 100.0, 200.0, 81.0, 82.0]])  # exactly anchor 3
    raw = [r.requires_grad_() for r in _raw(tiny)]
    total, _ = loss(raw, target, (320, 320))
    total.backward()
    obj_grad = raw[0].grad[0, :, :, :, 4]
    # the responsible logit is pushed up (negative gradient): anchor slot 0 (=3), row 6, col 3
    assert obj_grad[0, 6, 3] < 0
    pushed_up = (obj_grad < 0).nonzero().tolist()
    assert pushed_up == [[0, 6, 3]]
    # the other head holds anchor 3 too (slot 2), so it is responsible in its cell, as in Darknet
    assert (raw[1].grad[0, :, :, :, 4] < 0).nonzero().tolist() == [[2, 12, 6]]
    cls_grad = raw[0].grad[0, 0, 6, 3, 5:]
    assert cls_grad[7] < 0 and bool((cls_grad[torch.arange(80) != 7] > 0).all())


def test_predictions_overlapping_a_truth_are_ignored(tiny):
    loss = YoloLoss.from_model(tiny)
    target = torch.tensor([[0, 0, 160.0, 160.0, 300.0, 300.0]])
    raw = _raw(tiny)
    # make head-0 anchor 2 (344x319) predict the truth's box in neighbouring cells: IoU > 0.7
    raw[0][0, 2, :, :, :2] = 0.0  # centres in the middle of each cell
    raw[0][0, 2, :, :, 2:4] = torch.log(torch.tensor([300 / 344, 300 / 319]))
    raw[0][0, 2, :, :, 4] = 5.0  # confident, so an unignored obj target 0 would cost a lot
    raw = [r.requires_grad_() for r in raw]
    total, _ = loss(raw, target, (320, 320))
    total.backward()
    grad = raw[0].grad[0, 2, :, :, 4]
    # the truth (centre 160,160) is anchor 5's in cell (5, 5): pushed up; the boxes predicted
    # from cells (4,4), (4,5), (5,4) (centres 144 or 176) overlap it by 0.81: ignored
    assert grad[5, 5] < 0
    assert grad[4, 4] == 0 and grad[4, 5] == 0 and grad[5, 4] == 0
    assert grad[0, 0] > 0  # a far cell's box does not overlap: pushed towards 0


@pytest.mark.parametrize("iou_loss", ["ciou", "giou", "diou", "mse"])
def test_minimising_the_loss_decodes_to_the_truth(tiny, iou_loss):
    loss = YoloLoss.from_model(tiny, default_iou_loss=iou_loss)
    targets = torch.tensor([[0, 16, 120.0, 150.0, 90.0, 60.0], [0, 2, 250.0, 80.0, 40.0, 40.0]])
    raw = [r.clone().zero_().requires_grad_() for r in _raw(tiny)]
    opt = torch.optim.Adam(raw, lr=0.1)
    for _ in range(150):
        opt.zero_grad()
        total, _ = loss(raw, targets, (320, 320))
        total.backward()
        opt.step()
    tiny.eval()
    with torch.no_grad():
        dets = torch.cat(
            [
                tiny.layers[i].decode(r).flatten(1, 3)
                for i, r in zip(tiny.yolo_indices, raw, strict=True)
            ],
            1,
        )[0]
    for t in targets:
        conf = dets[:, 4] * dets[:, 5 + int(t[1])]
        best = dets[conf.argmax()]
        assert conf.max() > 0.9
        torch.testing.assert_close(best[:4], t[2:6], atol=2.0, rtol=0.03)
    assert (dets[:, 4] > 0.5).sum() <= 4  # nothing else believes it has an object
