"""Classifier distillation: the soft-target term of yolo_prune.classify.train."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from yolo_prune.classify.train import TEMPERATURE, distilled_cross_entropy
from yolo_prune.errors import ConfigError


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g), torch.randint(0, 4, (16,), generator=g)


def test_a_student_equal_to_its_teacher_pays_only_the_label_loss():
    torch.manual_seed(0)
    student = nn.Linear(6, 4)
    teacher = nn.Linear(6, 4)
    teacher.load_state_dict(student.state_dict())
    x, y = _batch()
    loss = distilled_cross_entropy(teacher, weight=2.0)(student, (x, y))
    assert loss.item() == pytest.approx(F.cross_entropy(student(x), y).item(), abs=1e-6)


def test_the_soft_term_is_the_tempered_kl_to_the_teacher_and_trains_only_the_student():
    torch.manual_seed(1)
    student, teacher = nn.Linear(6, 4), nn.Linear(6, 4)
    x, y = _batch(1)
    loss = distilled_cross_entropy(teacher, weight=0.5)(student, (x, y))
    p_teacher = F.softmax(teacher(x).detach() / TEMPERATURE, dim=1)
    log_student = F.log_softmax(student(x) / TEMPERATURE, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_student)).sum(1).mean()
    expected = F.cross_entropy(student(x), y) + 0.5 * TEMPERATURE**2 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl.item() > 1e-4  # the two models differ, so the term is not vacuous
    loss.backward()
    assert student.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_labels_zero_leaves_the_soft_term_alone():
    torch.manual_seed(2)
    student, teacher = nn.Linear(6, 4), nn.Linear(6, 4)
    x, y = _batch(2)
    both = distilled_cross_entropy(teacher, weight=0.5)(student, (x, y))
    alone = distilled_cross_entropy(teacher, weight=0.5, labels=0.0)(student, (x, y))
    hard = F.cross_entropy(student(x), y)
    assert alone.item() == pytest.approx((both - hard).item(), rel=1e-5)
    assert alone.item() > 1e-4


def test_train_classifier_refuses_a_weight_without_a_teacher():
    from yolo_prune.classify.train import ClassifyTrainConfig, train_classifier
    from yolo_prune.data.classification import ShuffledBatches

    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 2, (8,))
    batches = ShuffledBatches(x, y, batch_size=4, shift=0, seed=0)
    with pytest.raises(ConfigError, match="needs a teacher"):
        train_classifier(nn.Flatten(), batches, ClassifyTrainConfig(), epochs=1, distill=1.0)
    with pytest.raises(ConfigError, match="nothing to learn"):
        train_classifier(nn.Flatten(), batches, ClassifyTrainConfig(), epochs=1, labels=0.0)
