"""The YOLO training loss as Darknet's ``[yolo]`` layer defines it (YOLOv3/v4 family).

For every ground-truth box the anchor whose shape overlaps it best (IoU of boxes sharing a
centre, over all anchors of the network) is responsible for it in the grid cell holding its
centre, if that anchor belongs to this head; with ``iou_thresh < 1`` every anchor of the head
whose shape IoU exceeds ``iou_thresh`` is responsible too. Responsible predictions learn the box
(CIoU/DIoU/GIoU or MSE as ``iou_loss`` says, times ``iou_normalizer``), objectness 1 (times
``obj_normalizer``) and the class (binary cross-entropy, optional label smoothing, times
``cls_normalizer``). Every other prediction learns objectness 0, unless its box already
overlaps some ground truth by more than ``ignore_thresh``. Sums over the batch, divided by the
batch size.

Darknet writes its gradients by hand (and skips the sigmoid's derivative for x, y); this is the
differentiable loss whose gradients those deltas approximate, which is what a PyTorch port of
the family trains with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from yolo_prune.darknet.graph import yolo_anchors

# torchvision.ops' box losses by iou_loss name (torchvision is imported on the first loss: it
# takes 2-3 s, which commands that never train a detector should not pay).
_IOU_LOSSES = {
    "ciou": "complete_box_iou_loss",
    "diou": "distance_box_iou_loss",
    "giou": "generalized_box_iou_loss",
}


@dataclass(frozen=True)
class HeadSpec:
    """What the loss needs to know about one ``[yolo]`` layer."""

    mask: tuple[int, ...]  # indices into the network's full anchor list
    classes: int  # number of classes
    scale_x_y: float  # Darknet's centre scaling (1 = plain sigmoid)
    new_coords: bool  # scaled-YOLOv4 decoding: inputs already logistic, wh = (2t)^2 * anchor
    ignore_thresh: float  # predictions overlapping a truth by more than this get no obj loss
    iou_thresh: float  # extra anchors with shape IoU above this are also responsible
    iou_normalizer: float  # weight of the box loss
    obj_normalizer: float  # weight of the objectness loss
    cls_normalizer: float  # weight of the class loss
    iou_loss: str  # "ciou", "diou", "giou", "iou" or "mse"
    label_smooth_eps: float  # class targets become 1 - eps/2 and eps/2


class YoloLoss:
    """Darknet's YOLO loss over all heads of a network.

    Args:
        heads: one :class:`HeadSpec` per ``[yolo]`` layer, in network order.
        anchors: ``[K, 2]`` every anchor (w, h) of the network in input pixels.
        default_iou_loss: used where a cfg gives no ``iou_loss`` (Darknet's own default is mse).
    """

    def __init__(self, heads: list[HeadSpec], anchors: torch.Tensor):
        self.heads = heads
        self.anchors = anchors.float()

    @classmethod
    def from_model(cls, model, *, default_iou_loss: str = "ciou") -> YoloLoss:
        """Build the loss from a :class:`~yolo_prune.darknet.Darknet` detector's ``[yolo]``
        sections (all heads of the family share one anchor list)."""
        heads, anchors = [], None
        for i in model.yolo_indices:
            sec = model.graph.layers[i].section
            mask, _ = yolo_anchors(sec)
            a = sec["anchors"]
            anchors = torch.tensor(a[: 2 * sec["num"]], dtype=torch.float32).view(-1, 2)
            heads.append(
                HeadSpec(
                    mask=tuple(mask),
                    classes=sec["classes"],
                    scale_x_y=float(sec["scale_x_y"]),
                    new_coords=bool(sec["new_coords"]),
                    ignore_thresh=float(sec["ignore_thresh"]),
                    iou_thresh=float(sec["iou_thresh"]),
                    iou_normalizer=float(sec["iou_normalizer"]),
                    obj_normalizer=float(sec["obj_normalizer"]),
                    cls_normalizer=float(sec["cls_normalizer"]),
                    iou_loss=sec.get("iou_loss", default_iou_loss),
                    label_smooth_eps=float(sec["label_smooth_eps"]),
                )
            )
        if anchors is None:
            raise ValueError("the model has no [yolo] layer; YoloLoss is for detectors")
        return cls(heads, anchors)

    def __call__(
        self, outputs: list[torch.Tensor], targets: torch.Tensor, input_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one batch.

        Args:
            outputs: per head, the raw ``[B, A, H, W, 5 + C]`` tensor a Darknet detector returns
                in training mode.
            targets: ``[M, 6]`` rows (image index in batch, class, cx, cy, w, h) with the box in
                input pixels.
            input_hw: network input (height, width) in pixels.

        Returns:
            The scalar loss, and its parts (box, obj, cls) as floats for logging.
        """
        batch = outputs[0].shape[0]
        device = outputs[0].device
        anchors = self.anchors.to(device)
        targets = targets.to(device=device, dtype=torch.float32)
        from torchvision.ops import box_convert

        gt_xyxy = box_convert(targets[:, 2:6], "cxcywh", "xyxy")
        # The responsible anchor of every truth: best shape IoU among all network anchors.
        shape_iou = _shape_iou(targets[:, 4:6], anchors)  # [M, K]
        best = shape_iou.argmax(1) if len(targets) else torch.zeros(0, dtype=torch.long)
        parts = {"box": outputs[0].new_zeros(()), "obj": outputs[0].new_zeros(()),
                 "cls": outputs[0].new_zeros(())}  # fmt: skip
        for raw, head in zip(outputs, self.heads, strict=True):
            box, obj, cls = self._head_loss(raw, head, targets, gt_xyxy, shape_iou, best,
                                            anchors, input_hw)  # fmt: skip
            parts["box"] = parts["box"] + box
            parts["obj"] = parts["obj"] + obj
            parts["cls"] = parts["cls"] + cls
        total = (parts["box"] + parts["obj"] + parts["cls"]) / batch
        return total, {k: float(v.detach()) / batch for k, v in parts.items()}

    def _head_loss(self, raw, head: HeadSpec, targets, gt_xyxy, shape_iou, best, anchors,
                   input_hw):  # fmt: skip
        from torchvision import ops
        from torchvision.ops import box_convert, box_iou

        b, a, h, w, _ = raw.shape
        in_h, in_w = input_hw
        stride = raw.new_tensor([in_w / w, in_h / h])
        mask = torch.tensor(head.mask, device=raw.device)
        head_anchors = anchors[mask]  # [A, 2]

        # Decode every prediction (differentiably) to cxcywh pixels.
        t_xy, t_wh, t_obj, t_cls = raw[..., :2], raw[..., 2:4], raw[..., 4], raw[..., 5:]
        xy = t_xy if head.new_coords else torch.sigmoid(t_xy)
        xy = xy * head.scale_x_y - 0.5 * (head.scale_x_y - 1.0)
        dev = raw.device
        gy, gx = torch.meshgrid(
            torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij"
        )
        grid = torch.stack((gx, gy), -1).to(raw.dtype)
        centre = (xy + grid) * stride
        a_wh = head_anchors.view(1, a, 1, 1, 2).to(raw.dtype)
        size = t_wh * t_wh * 4 * a_wh if head.new_coords else torch.exp(t_wh.clamp(max=10)) * a_wh
        pred = torch.cat((centre, size), -1)  # [B, A, H, W, 4]

        # Which truths this head is responsible for, at which anchor and cell.
        resp = best.unsqueeze(1) == mask.unsqueeze(0)  # [M, A]
        if head.iou_thresh < 1.0:
            resp |= shape_iou[:, mask] > head.iou_thresh
        t_idx, a_idx = resp.nonzero(as_tuple=True)
        tgt = targets[t_idx]
        img = tgt[:, 0].long()
        col = (tgt[:, 2] / stride[0]).long().clamp(0, w - 1)
        row = (tgt[:, 3] / stride[1]).long().clamp(0, h - 1)

        # Objectness: 1 where responsible; 0 elsewhere unless the prediction already overlaps
        # a truth of its image by more than ignore_thresh.
        obj_target = torch.zeros_like(t_obj)
        obj_weight = torch.ones_like(t_obj)
        with torch.no_grad():
            flat = box_convert(pred.detach().view(b, -1, 4), "cxcywh", "xyxy")
            for i in range(b):
                gts = gt_xyxy[targets[:, 0] == i]
                if len(gts):
                    best_iou = box_iou(flat[i], gts).max(1).values.view(a, h, w)
                    obj_weight[i][best_iou > head.ignore_thresh] = 0.0
        obj_target[img, a_idx, row, col] = 1.0
        obj_weight[img, a_idx, row, col] = 1.0
        if head.new_coords:
            obj_loss = F.binary_cross_entropy(
                t_obj.clamp(1e-7, 1 - 1e-7), obj_target, reduction="none"
            )
        else:
            obj_loss = F.binary_cross_entropy_with_logits(t_obj, obj_target, reduction="none")
        obj = head.obj_normalizer * (obj_loss * obj_weight).sum()

        if len(tgt) == 0:
            zero = raw.sum() * 0.0
            return zero, obj, zero
        p_box = pred[img, a_idx, row, col]  # [R, 4] cxcywh
        t_box = tgt[:, 2:6]
        if head.iou_loss == "mse":
            scale = 2.0 - (t_box[:, 2] * t_box[:, 3]) / (in_w * in_h)
            p_xy = xy[img, a_idx, row, col]
            t_xy_cell = t_box[:, :2] / stride - torch.stack((col, row), -1).to(raw.dtype)
            p_twh = t_wh[img, a_idx, row, col]
            t_twh = torch.log(t_box[:, 2:4] / head_anchors[a_idx]).clamp(-10, 10)
            err = ((p_xy - t_xy_cell) ** 2).sum(1) + ((p_twh - t_twh) ** 2).sum(1)
            box = head.iou_normalizer * (0.5 * scale * err).sum()
        else:
            name = _IOU_LOSSES.get(head.iou_loss)
            loss_fn = getattr(ops, name) if name else None
            p_xyxy = box_convert(p_box, "cxcywh", "xyxy")
            t_xyxy = box_convert(t_box, "cxcywh", "xyxy")
            if loss_fn is None:  # plain IoU loss
                per = 1.0 - torch.diag(box_iou(p_xyxy, t_xyxy))
            else:
                per = loss_fn(p_xyxy, t_xyxy, reduction="none")
            box = head.iou_normalizer * per.sum()

        cls_target = torch.zeros_like(t_cls[img, a_idx, row, col])
        cls_target[torch.arange(len(tgt), device=raw.device), tgt[:, 1].long()] = 1.0
        if head.label_smooth_eps:
            eps = head.label_smooth_eps
            cls_target = cls_target * (1 - eps) + 0.5 * eps
        p_cls = t_cls[img, a_idx, row, col]
        if head.new_coords:
            cls_loss = F.binary_cross_entropy(
                p_cls.clamp(1e-7, 1 - 1e-7), cls_target, reduction="sum"
            )
        else:
            cls_loss = F.binary_cross_entropy_with_logits(p_cls, cls_target, reduction="sum")
        return box, obj, head.cls_normalizer * cls_loss


def _shape_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU of boxes sharing a centre: ``wh`` [M, 2] against ``anchors`` [K, 2] -> [M, K]."""
    inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * torch.minimum(
        wh[:, None, 1], anchors[None, :, 1]
    )
    union = wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter
    return inter / union.clamp(min=1e-9)


def distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Imitation of a teacher detector's raw head outputs, per image.

    Each head is ``[B, A, H, W, 5 + C]`` raw (before sigmoid / exp), as a Darknet model returns
    in training mode. Per cell: binary cross-entropy of the student's objectness against the
    teacher's objectness probability, and, weighted by that probability (where the teacher sees
    an object), cross-entropy of the class logits against the teacher's class probabilities plus
    the squared error of the four raw box values. Summed over cells and heads, divided by ``B``
    (the scale of :class:`YoloLoss`).
    """
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher, strict=True):
        t = t.detach().float()
        s = s.float()
        t_obj = torch.sigmoid(t[..., 4])
        obj = F.binary_cross_entropy_with_logits(s[..., 4], t_obj, reduction="sum")
        cls = F.binary_cross_entropy_with_logits(
            s[..., 5:], torch.sigmoid(t[..., 5:]), reduction="none"
        ).sum(-1)
        box = (s[..., :4] - t[..., :4]).pow(2).sum(-1)
        total = total + obj + (t_obj * (cls + box)).sum()
    return total / student[0].shape[0]
