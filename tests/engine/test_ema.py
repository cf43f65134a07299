"""EMA of weights: the ramped decay, buffers copied, state round trip."""

from __future__ import annotations

import math

import torch

from yolo_prune.engine.ema import EMAHook, ModelEMA


def test_ema_averages_parameters_and_copies_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1.0))
    torch.testing.assert_close(ema.module[0].weight, d * w0 + (1 - d) * (w0 + 1))
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((2,), 3.0))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trip():
    model = torch.nn.Linear(3, 2)
    a = EMAHook(ModelEMA(model))
    with torch.no_grad():
        model.weight.mul_(2)
    a.ema.update(model)
    b = EMAHook(ModelEMA(torch.nn.Linear(3, 2)))
    b.load_state_dict(a.state_dict())
    assert b.ema.updates == 1
    torch.testing.assert_close(b.ema.module.weight, a.ema.module.weight)
