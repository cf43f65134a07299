import copy

import pytest
import torch

from yolo_prune.engine import Hook, Trainer
from yolo_prune.errors import PruneError
from yolo_prune.prune.masks import MaskHook, apply_masks_
from yolo_prune.prune.projections import project_global
from yolo_prune.prune.targets import select_targets

pytestmark = pytest.mark.usefixtures("flush_denormals")

OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def _masks(model, ratio=0.7):
    params = dict(model.named_parameters())
    names = select_targets(model)
    return project_global({n: params[n] for n in names}, ratio)


def _assert_zero_where_pruned(model, masks):
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0, n


def _batches(case, steps):
    return [case.batch(seed=i) for i in range(steps)]


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_masks_hold_after_steps(case2, opt):

    model = case2.model()
    masks = _masks(model)
    optimizer = OPTIMIZERS[opt](model.parameters())

    class Check(Hook):
        def after_step(self, state):  # runs after MaskHook's after_step
            _assert_zero_where_pruned(state.model, masks)
            self.steps = getattr(self, "steps", 0) + 1

    check = Check()
    Trainer(model, optimizer, case2.loss, hooks=[MaskHook(masks), check]).fit(
        _batches(case2, 2), epochs=2
    )
    assert check.steps == 4
    # kept weights did train
    params = dict(model.named_parameters())
    fresh = dict(case2.model().named_parameters())
    moved = any(not torch.equal(params[n][m], fresh[n][m]) for n, m in masks.items())
    assert moved


def test_resumed_dense_optimizer_state_is_masked(case2):

    model = case2.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    # A dense run first leaves non-zero momentum everywhere (as a resumed checkpoint would).
    Trainer(model, optimizer, case2.loss).fit(_batches(case2, 2), epochs=1)
    masks = _masks(model)
    params = dict(model.named_parameters())
    assert any(
        torch.count_nonzero(optimizer.state[params[n]]["momentum_buffer"][~m])
        for n, m in masks.items()
    )
    Trainer(model, optimizer, case2.loss, hooks=[MaskHook(masks)]).fit(_batches(case2, 2), epochs=1)
    _assert_zero_where_pruned(model, masks)
    for n, m in masks.items():
        assert torch.count_nonzero(optimizer.state[params[n]]["momentum_buffer"][~m]) == 0


def test_ema_copy_stays_masked(detector):

    model = detector.model()
    ema = copy.deepcopy(model)
    masks = _masks(model)

    class EMA(Hook):
        def after_step(self, state):
            with torch.no_grad():
                for e, p in zip(ema.parameters(), state.model.parameters(), strict=True):
                    e.mul_(0.9).add_(p, alpha=0.1)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    Trainer(model, optimizer, detector.loss, hooks=[EMA(), MaskHook(masks, extra=[ema])]).fit(
        _batches(detector, 3), epochs=1
    )
    _assert_zero_where_pruned(ema, masks)
    _assert_zero_where_pruned(model, masks)


def test_masks_hold_under_autocast(resnet):

    def amp_loss(model, batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return resnet.loss(model, batch).float()

    model = resnet.model()
    masks = _masks(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    Trainer(model, optimizer, amp_loss, hooks=[MaskHook(masks)]).fit(_batches(resnet, 2), epochs=1)
    _assert_zero_where_pruned(model, masks)


def test_apply_masks_checks_names_and_shapes(classifier):
    model = classifier.model()
    with pytest.raises(PruneError, match="has no parameter 'nope'"):
        apply_masks_(model, {"nope": torch.ones(3, dtype=torch.bool)})
    name = select_targets(model)[0]
    with pytest.raises(PruneError, match="mask for .* has shape"):
        apply_masks_(model, {name: torch.ones(3, dtype=torch.bool)})
