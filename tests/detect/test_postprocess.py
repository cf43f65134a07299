"""Post-processing: thresholds as Darknet applies them, class-aware NMS, mapping back."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from yolo_prune.detect import Detections, postprocess, resize_geometry


def _rows(*rows: tuple[float, ...], classes: int = 3) -> torch.Tensor:
    """``[1, N, 5 + classes]`` from (cx, cy, w, h, obj, p0, p1, ...) tuples."""
    out = torch.zeros(1, len(rows), 5 + classes)
    for i, r in enumerate(rows):
        out[0, i, : len(r)] = torch.tensor(r)
    return out


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference(pred: torch.Tensor, conf: float, nms: float) -> set[tuple]:
    """Darknet's get_yolo_detections + do_nms_sort, written out with Python loops."""
    cands = []
    for row in pred.tolist():
        cx, cy, w, h, obj, *probs = row
        if obj <= conf:
            continue
        for c, p in enumerate(probs):
            if obj * p > conf:
                cands.append((obj * p, c, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    kept = []
    for score, c, box in sorted(cands, key=lambda t: -t[0]):
        if all(k[1] != c or _iou(k[2], box) <= nms for k in kept):
            kept.append((score, c, box))
    return {(round(s, 9), c, tuple(round(v, 6) for v in b)) for s, c, b in kept}


def _as_set(d: Detections) -> set[tuple]:
    return {
        (round(s, 9), c, tuple(round(v, 6) for v in b))
        for b, s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True)
    }


def test_score_is_objectness_times_probability_strictly_above_conf():
    pred = _rows(
        (50, 50, 20, 20, 0.5, 0.5, 0.0, 0.0),  # 0.25: not above 0.25
        (150, 50, 20, 20, 0.5, 0.6, 0.0, 0.0),  # 0.30
        (250, 50, 20, 20, 0.2, 1.0, 1.0, 1.0),  # objectness below conf
    )
    (d,) = postprocess(pred, conf=0.25)
    assert d.labels.tolist() == [0]
    torch.testing.assert_close(d.scores, torch.tensor([0.3]))
    torch.testing.assert_close(d.boxes, torch.tensor([[140.0, 40.0, 160.0, 60.0]]))


def test_a_box_may_carry_several_classes_unless_single_label():
    pred = _rows((50, 50, 20, 20, 0.9, 0.8, 0.5, 0.1))
    (multi,) = postprocess(pred, conf=0.25)
    assert multi.labels.tolist() == [0, 1]
    (single,) = postprocess(pred, conf=0.25, multi_label=False)
    assert single.labels.tolist() == [0]


def test_nms_is_per_class():
    pred = _rows(
        (50, 50, 20, 20, 0.9, 1.0, 0.0),
        (51, 50, 20, 20, 0.8, 1.0, 0.0),  # same class, IoU ~0.9: suppressed
        (52, 50, 20, 20, 0.7, 0.0, 1.0),  # other class: kept
        (90, 50, 20, 20, 0.6, 1.0, 0.0),  # same class, no overlap: kept
        classes=2,
    )
    (d,) = postprocess(pred, conf=0.25, nms=0.45)
    assert d.labels.tolist() == [0, 1, 0]
    torch.testing.assert_close(d.scores, torch.tensor([0.9, 0.7, 0.6]))


def test_max_det_keeps_the_best():
    pred = _rows(*[(30 * i + 15, 15, 10, 10, 0.3 + 0.05 * i, 1.0) for i in range(10)], classes=1)
    (d,) = postprocess(pred, conf=0.25, max_det=3)
    torch.testing.assert_close(d.scores, torch.tensor([0.75, 0.70, 0.65]))


def test_boxes_are_mapped_back_and_clipped():
    pred = _rows((208, 208, 104, 104, 0.9, 1.0), (400, 10, 60, 60, 0.9, 0.0, 1.0))
    t = resize_geometry(832, 208, 416)  # x scaled by 1/2, y by 2
    (d,) = postprocess(pred, [t], conf=0.25)
    torch.testing.assert_close(
        d.boxes, torch.tensor([[312.0, 78.0, 520.0, 130.0], [740.0, 0.0, 832.0, 20.0]])
    )


def test_empty_and_batched():
    pred = torch.cat([_rows((50, 50, 20, 20, 0.9, 1.0)), _rows((50, 50, 20, 20, 0.1, 1.0))])
    a, b = postprocess(pred, conf=0.25)
    assert len(a) == 1 and len(b) == 0
    assert b.boxes.shape == (0, 4) and b.labels.dtype == torch.int64
    with pytest.raises(ValueError, match="expected"):
        postprocess(torch.zeros(10, 85))
    with pytest.raises(ValueError, match="transforms for a batch"):
        postprocess(pred, [resize_geometry(10, 10, 32)])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 60),
    conf=st.sampled_from([0.05, 0.25, 0.5]),
    nms=st.sampled_from([0.3, 0.45, 0.7]),
)
def test_matches_darknets_algorithm_written_out(seed, n, conf, nms):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.rand(1, n, 5 + 4, generator=gen, dtype=torch.float64)
    pred[..., :2] *= 100  # centres in a 100 px square: plenty of overlaps
    pred[..., 2:4] = pred[..., 2:4] * 40 + 5
    (d,) = postprocess(pred, conf=conf, nms=nms)
    assert _as_set(d) == reference(pred[0], conf, nms)
    assert torch.all(d.scores[:-1] >= d.scores[1:])
