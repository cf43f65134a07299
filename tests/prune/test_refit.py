"""The least-squares refit of an unstructured cut (yolo_prune.prune.refit)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from yolo_prune.errors import PruneError
from yolo_prune.prune.masks import apply_masks_
from yolo_prune.prune.refit import _solve_masked, is_filter_cut, refit_masked_


def test_masked_conjugate_gradients_solve_each_rows_own_system():
    gen = torch.Generator().manual_seed(0)
    g, r, d = 2, 5, 12
    a = torch.randn(g, d, 3 * d, generator=gen, dtype=torch.float64)
    h = a @ a.transpose(1, 2) + 0.1 * torch.eye(d, dtype=torch.float64)
    rhs = torch.randn(g, r, d, generator=gen, dtype=torch.float64)
    mask = torch.rand(g, r, d, generator=gen) > 0.5
    mask[0, 0] = False  # a row with nothing kept stays zero
    x, left = _solve_masked(h, rhs, torch.zeros_like(rhs), mask, iters=200, tol=1e-10)
    assert left <= 1e-10
    assert not x[~mask].any() and not x[0, 0].any()
    for gi in range(g):
        for ri in range(r):
            k = mask[gi, ri].nonzero().squeeze(1)
            if len(k):
                want = torch.linalg.solve(h[gi][k][:, k], rhs[gi, ri, k])
                torch.testing.assert_close(x[gi, ri, k], want, rtol=1e-6, atol=1e-8)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # grouped: one system per group
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    ).eval()


def _masks(net: nn.Module, keep: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        n: torch.rand(p.shape, generator=gen) < keep
        for n, p in net.named_parameters()
        if n.endswith("weight") and p.dim() > 1
    }


@pytest.mark.parametrize("window", [1, 2, 8])  # every layer sequential, mixed, one pass
def test_the_refit_brings_the_cut_back_towards_the_dense_outputs_and_keeps_the_mask(window):
    dense = _net()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        dense[1].running_mean.uniform_(-0.5, 0.5)
        dense[1].running_var.uniform_(0.5, 2.0)
    cut = copy.deepcopy(dense)
    masks = _masks(cut, keep=0.5)
    apply_masks_(cut, masks)
    images = torch.randn(48, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    held_out = torch.randn(48, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = (cut(held_out) - dense(held_out)).pow(2).mean()
        order = refit_masked_(cut, dense, masks, images, window=window)
        after = (cut(held_out) - dense(held_out)).pow(2).mean()
    assert order == ["0.weight", "3.weight", "5.weight", "8.weight"]  # forward order
    assert after < 0.5 * before  # on images it was not fitted on
    for name, p in cut.named_parameters():
        if name in masks:
            assert not p[~masks[name]].any(), name
    # what the masks do not name is not touched: batch norm, and the biases of layers left out
    torch.testing.assert_close(cut[1].running_mean, dense[1].running_mean)


def test_an_uncut_layer_is_left_alone_and_a_foreign_mask_is_refused():
    dense = _net()
    cut = copy.deepcopy(dense)
    masks = _masks(cut, keep=0.5)
    masks["5.weight"] = torch.ones_like(masks["5.weight"])  # nothing cut there
    apply_masks_(cut, masks)
    images = torch.randn(16, 3, 6, 6)
    order = refit_masked_(cut, dense, masks, images)
    assert "5.weight" not in order
    torch.testing.assert_close(cut[5].weight, dense[5].weight)
    with pytest.raises(PruneError, match="no parameter 'head.weight'"):
        refit_masked_(cut, dense, {"head.weight": torch.ones(3, 3)}, images)


def test_a_cut_of_whole_rows_is_a_filter_cut():
    rows = torch.ones(4, 3, 3, 3, dtype=torch.bool)
    rows[1] = False
    assert is_filter_cut({"a": rows, "bn": torch.tensor([True, False, True, True])})
    mixed = rows.clone()
    mixed[0, 0, 0, 0] = False
    assert not is_filter_cut({"a": rows, "b": mixed})
