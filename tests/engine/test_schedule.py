"""Warm-up + cosine: the rate as a function of the step, applied by a hook."""

from __future__ import annotations

import math

import pytest
import torch

from yolo_prune.engine import Trainer
from yolo_prune.engine.schedule import LRScheduleHook, WarmupCosine


def test_warmup_then_cosine_endpoints():
    s = WarmupCosine(total_steps=110, warmup_steps=10, warmup_start=0.1, final_ratio=0.05)
    assert s.factor(0) == pytest.approx(0.1)
    assert s.factor(5) == pytest.approx(0.55)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.05 + 0.95 * 0.5)
    assert s.factor(110) == pytest.approx(0.05)
    factors = [s.factor(k) for k in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))


def test_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(total_steps=5, warmup_steps=6)


def test_hook_sets_lr_from_the_step():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    s = WarmupCosine(total_steps=4, warmup_steps=2, warmup_start=0.0, final_ratio=0.0)
    seen = []

    class Spy(LRScheduleHook):
        def before_step(self, state):
            super().before_step(state)
            seen.append(state.optimizer.param_groups[0]["lr"])

    batches = [torch.randn(3, 2) for _ in range(4)]
    Trainer(model, opt, lambda m, x: m(x).sum(), hooks=[Spy(s)]).fit(batches, epochs=1)
    expected = [0.5 * s.factor(k) for k in range(4)]
    assert seen == pytest.approx(expected)
    assert seen[0] == 0.0 and math.isclose(seen[2], 0.5)
