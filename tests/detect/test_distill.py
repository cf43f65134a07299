"""Distillation from a dense teacher: the loss, and train_detector with a teacher."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.detect.loss import distillation_loss
from yolo_prune.detect.train import TrainConfig, train_detector
from yolo_prune.errors import ConfigError

TINY_CFG = Path(__file__).resolve().parents[1] / "prune" / "tiny_detector.cfg"


def _heads(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 4, 4, 7, generator=g), torch.randn(2, 3, 8, 8, 7, generator=g)]


def test_imitation_is_stationary_at_the_teacher_and_pulls_towards_it():
    teacher = _heads(0)
    same = [t.clone().requires_grad_(True) for t in teacher]
    distillation_loss(same, teacher).backward()
    assert all(float(s.grad.abs().max()) < 1e-6 for s in same)  # nothing to learn from itself
    other = [t.clone().requires_grad_(True) for t in _heads(1)]
    loss = distillation_loss(other, teacher)
    loss.backward()
    with torch.no_grad():  # a small step against the gradient lowers the loss
        stepped = [o - 0.01 * o.grad for o in other]
        assert distillation_loss(stepped, teacher) < loss
    # per image: two copies of the batch give the same value
    doubled = distillation_loss(
        [torch.cat([o, o]) for o in other], [torch.cat([t, t]) for t in teacher]
    )
    assert float(doubled.detach()) == pytest.approx(float(loss.detach()), rel=1e-5)


def test_train_with_a_teacher_logs_the_term_and_keeps_the_teacher(tmp_path, coco8_two_classes):
    data = coco8_two_classes
    torch.manual_seed(0)
    model = Darknet.from_cfg(TINY_CFG, size=64)
    teacher = copy.deepcopy(model)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    config = TrainConfig(cfg=TINY_CFG, data=data, out=tmp_path / "run", epochs=1, size=64,
                         batch_size=2, ema=False, distill=1.0)  # fmt: skip
    result = train_detector(config, model=model, teacher=teacher)
    assert result["history"][-1]["distill"] > 0
    for k, v in teacher.state_dict().items():  # running statistics included: BN in eval mode
        assert torch.equal(v, before[k]), k
    with pytest.raises(ConfigError, match="needs a teacher"):
        train_detector(config, model=copy.deepcopy(model))


def test_labels_zero_trains_on_the_teacher_alone(tmp_path, coco8_two_classes):
    torch.manual_seed(0)
    model = Darknet.from_cfg(TINY_CFG, size=64)
    teacher = copy.deepcopy(model)
    figures = {}
    for labels in (1.0, 0.0):
        config = TrainConfig(cfg=TINY_CFG, data=coco8_two_classes, out=tmp_path / f"l{labels}",
                             epochs=1, size=64, batch_size=2, ema=False, distill=1.0,
                             labels=labels)  # fmt: skip
        figures[labels] = train_detector(config, model=copy.deepcopy(model), teacher=teacher)[
            "history"
        ][-1]
    # the label terms are still measured (box, obj, cls), but only the teacher's term is learnt
    assert figures[0.0]["obj"] > 0
    assert figures[0.0]["loss"] == pytest.approx(figures[0.0]["distill"], rel=1e-6)
    assert figures[1.0]["loss"] > figures[1.0]["distill"] * 1.01
    with pytest.raises(ConfigError, match="nothing to learn"):
        TrainConfig(cfg=TINY_CFG, data=coco8_two_classes, out=tmp_path, epochs=1, labels=0.0)
    with pytest.raises(ConfigError, match="labels=-1"):
        TrainConfig(cfg=TINY_CFG, data=coco8_two_classes, out=tmp_path, epochs=1, labels=-1.0)
