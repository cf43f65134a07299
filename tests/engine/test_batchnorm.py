"""Batch-norm statistics re-estimated for the current weights (yolo_prune.engine.batchnorm)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yolo_prune.engine.batchnorm import recalibrate_batchnorm_


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.03), nn.Dropout(0.5))


def test_statistics_become_the_exact_averages_over_the_batches_with_dropout_off():
    net = _net().train()
    batches = [torch.randn(4, 3, 8, 8) * (i + 1) + i for i in range(3)]
    with torch.no_grad():
        net[1].running_mean.fill_(100.0)  # stale statistics
        net[1].running_var.fill_(1e-3)
        conv = [net[0](x) for x in batches]
    assert recalibrate_batchnorm_(net, iter(batches)) == 1
    mean = torch.stack([y.mean(dim=(0, 2, 3)) for y in conv]).mean(0)
    var = torch.stack([y.var(dim=(0, 2, 3)) for y in conv]).mean(0)  # unbiased, as torch keeps
    torch.testing.assert_close(net[1].running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net[1].running_var, var, atol=1e-4, rtol=1e-5)
    # modes and momentum restored
    assert net.training and net[1].training and net[2].training
    assert net[1].momentum == 0.03


def test_dropout_does_not_reach_the_statistics():
    """A dropout before the batch norm would inflate the variance if it ran."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm2d(3)).eval()
    x = torch.randn(16, 3, 4, 4)
    recalibrate_batchnorm_(net, [x])
    torch.testing.assert_close(net[1].running_var, x.var(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert not net.training


def test_no_batches_is_an_error_that_leaves_the_statistics():
    net = _net()
    before = net[1].running_mean.clone().fill_(7.0)
    net[1].running_mean.copy_(before)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm_(net, [])
    torch.testing.assert_close(net[1].running_mean, before)


def test_a_model_without_batch_norm_is_left_alone():
    assert recalibrate_batchnorm_(nn.Linear(2, 2), []) == 0
