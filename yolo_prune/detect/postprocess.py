"""Decoded YOLO rows -> final detections: score threshold, class-aware NMS, original pixels.

The model's eval-mode output is ``[B, N, 5 + C]``: centre x, centre y, width, height in
network-input pixels, objectness, class probabilities. As Darknet does (``get_yolo_detections``
then ``do_nms_sort``), the score of class ``c`` for a row is ``objectness * p(c)``, a row may
yield several classes (every class whose score is above the threshold), and NMS runs per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from yolo_prune.detect.preprocess import ImageTransform


@dataclass
class Detections:
    """The detections in one image, highest score first."""

    boxes: torch.Tensor  # [N, 4] float32 xyxy, pixels (original image once mapped back)
    scores: torch.Tensor  # [N] float32 objectness * class probability, in (conf, 1]
    labels: torch.Tensor  # [N] int64 class index

    def __len__(self) -> int:
        return int(self.scores.numel())

    def xywh(self) -> torch.Tensor:
        """``[N, 4]`` boxes as top-left x, y, width, height (COCO's ``bbox``), pixels."""
        from torchvision.ops import box_convert

        return box_convert(self.boxes, "xyxy", "xywh")

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> Detections:
        return cls(
            boxes=torch.zeros((0, 4), device=device),
            scores=torch.zeros(0, device=device),
            labels=torch.zeros(0, dtype=torch.int64, device=device),
        )


def postprocess(
    prediction: torch.Tensor,
    transforms: Sequence[ImageTransform] | None = None,
    *,
    conf: float = 0.25,
    nms: float = 0.45,
    multi_label: bool = True,
    max_det: int = 300,
    max_candidates: int = 30000,
) -> list[Detections]:
    """Threshold, NMS and map back the rows of a batch.

    Args:
        prediction: ``[B, N, 5 + C]`` as the model returns in eval mode (see module docstring).
        transforms: per image, how it was mapped to the network input; ``None`` keeps boxes in
            network-input pixels (and does not clip them).
        conf: keep (row, class) pairs whose ``objectness * p(class)`` is above this.
        nms: IoU above which a lower-scored box of the same class is suppressed.
        multi_label: a row yields every class above ``conf`` (Darknet); ``False``: only its
            best class.
        max_det: at most this many detections per image, the highest scored.
        max_candidates: before NMS, keep at most this many pairs per image (the highest
            scored), bounding NMS time on an untrained or badly pruned model.

    Returns:
        One :class:`Detections` per image.
    """
    if prediction.dim() != 3 or prediction.shape[-1] < 6:
        raise ValueError(f"prediction has shape {tuple(prediction.shape)}; expected [B, N, 5 + C]")
    if transforms is not None and len(transforms) != prediction.shape[0]:
        raise ValueError(f"{len(transforms)} transforms for a batch of {prediction.shape[0]}")
    # Imported here: torchvision takes 2-3 s to import, which a command that never runs NMS
    # (--help, a classifier job) should not pay.
    from torchvision.ops import batched_nms, box_convert

    out = []
    for b, rows in enumerate(prediction):
        # obj * p > conf implies obj > conf: a cheap first cut that drops nearly every row.
        rows = rows[rows[:, 4] > conf]
        if rows.dtype in (torch.float16, torch.bfloat16):
            rows = rows.float()  # NMS and the mapping back want full precision
        if rows.numel() == 0:
            out.append(Detections.empty(prediction.device))
            continue
        probs = rows[:, 5:] * rows[:, 4:5]
        if multi_label:
            idx, labels = (probs > conf).nonzero(as_tuple=True)
            scores = probs[idx, labels]
        else:
            scores, labels = probs.max(dim=1)
            idx = (scores > conf).nonzero(as_tuple=True)[0]
            scores, labels = scores[idx], labels[idx]
        if scores.numel() > max_candidates:
            top = scores.topk(max_candidates).indices
            idx, scores, labels = idx[top], scores[top], labels[top]
        boxes = box_convert(rows[idx, :4], "cxcywh", "xyxy")
        keep = batched_nms(boxes, scores, labels, nms)[:max_det]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if transforms is not None:
            boxes = transforms[b].to_original(boxes)
        out.append(Detections(boxes=boxes, scores=scores, labels=labels))
    return out
