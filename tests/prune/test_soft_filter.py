import pytest
import torch

from yolo_prune.engine import Trainer
from yolo_prune.errors import PruneError
from yolo_prune.prune.soft_filter import (
    SoftFilterConfig,
    SoftFilterHook,
    SoftFilterPruner,
    decorrelation_penalty,
)

pytestmark = pytest.mark.usefixtures("flush_denormals")


def test_decorrelation_is_zero_for_orthogonal_filters_and_positive_otherwise():
    eye = torch.eye(4).reshape(4, 1, 2, 2)
    assert decorrelation_penalty({"w": eye}).item() == pytest.approx(0.0, abs=1e-7)
    same = torch.ones(4, 1, 2, 2)
    # 4x4 gram of ones minus identity: 12 off-diagonal ones, / 16
    assert decorrelation_penalty({"w": same}).item() == pytest.approx(12 / 16)
    # zeroed (pruned) filters do not count
    half = eye.clone()
    half[2:] = 0
    assert decorrelation_penalty({"w": half}).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_pruned_filters_can_come_back(detector):

    model = detector.model()
    names = ["layers.0.conv.weight", "layers.2.conv.weight"]
    hook = SoftFilterHook(names, SoftFilterConfig(ratio=0.5, epochs=2, decorrelation=1e-2))
    batches = [detector.batch(seed=i) for i in range(2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(model, opt, detector.loss, hooks=[hook])
    trainer.fit(batches, epochs=1)
    w = dict(model.named_parameters())["layers.2.conv.weight"]

    def zero_filters():
        return int((w.detach().reshape(16, -1).abs().sum(1) == 0).sum())

    assert zero_filters() == 8  # zeroed at the epoch end...
    assert len(hook.history) == 1
    # ...but not frozen: the next step gives them weights again
    Trainer(model, opt, detector.loss).fit(batches[:1], epochs=1)
    assert zero_filters() < 8


def test_soft_filter_pruner_final_masks_are_filterwise(case2):

    model = case2.model()
    batches = [case2.batch(seed=i) for i in range(2)]
    phases = []

    def fit(phase, epochs, hooks):
        phases.append(phase)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        Trainer(model, opt, case2.loss, hooks=hooks).fit(batches, epochs=epochs)

    cfg = SoftFilterConfig(ratio=0.25, epochs=2, retrain_epochs=1)
    result = SoftFilterPruner(cfg).run(model, fit=fit)
    assert phases == ["soft-filter", "retrain"]
    params = dict(model.named_parameters())
    for n, m in result.masks.items():
        rows = m.reshape(m.shape[0], -1)
        assert torch.equal(rows.all(1), rows.any(1))  # whole filters
        assert int((~rows[:, 0]).sum()) == round(0.25 * m.shape[0])
        assert torch.count_nonzero(params[n].detach()[~m]) == 0


def test_bad_soft_filter_configs():
    with pytest.raises(PruneError, match="soft-filter.norm='l0'"):
        SoftFilterConfig(ratio=0.5, norm="l0")
    with pytest.raises(PruneError, match=r"outside \[0, 1\)"):
        SoftFilterConfig(ratio=1.0)
