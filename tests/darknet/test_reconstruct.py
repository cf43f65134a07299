"""Least-squares refit of a shrunk Darknet to its dense original on calibration images."""

from __future__ import annotations

import copy

import torch

from yolo_prune.darknet import Darknet
from yolo_prune.darknet.channels import build_channel_map
from yolo_prune.darknet.reconstruct import reconstruct_
from yolo_prune.darknet.surgery import fold_pruned_, shrink
from yolo_prune.utils.linalg import NormalEquations

CFG = (
    "[net]\nwidth=16\nheight=16\nchannels=3\n"
    "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\npad=1\nactivation=leaky\n"
    "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\npad=1\nactivation=leaky\n"
    "[shortcut]\nfrom=-2\nactivation=linear\n"
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=1\nactivation=leaky\n"
    "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
)


def test_normal_equations_recover_an_exact_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 7, generator=g)
    w, b = torch.randn(3, 7, generator=g), torch.randn(3, generator=g)
    eq = NormalEquations(7, 3)
    eq.add_(x[:200], x[:200] @ w.T + b)
    eq.add_(x[200:], x[200:] @ w.T + b)
    got_w, got_b = eq.solve(torch.zeros(3, 7), torch.zeros(3), ridge=1e-9)
    torch.testing.assert_close(got_w, w, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_b, b, atol=1e-4, rtol=0)
    # a strong ridge pulls towards the prior, not towards zero
    far_w, far_b = eq.solve(w, b, ridge=1e6)
    torch.testing.assert_close(far_w, w, atol=1e-4, rtol=0)


def test_refit_brings_the_shrunk_model_back_towards_the_dense_one(randomize):
    dense = randomize(Darknet.from_cfg_text(CFG)).eval()
    cmap = build_channel_map(dense.graph)
    prunable = [g for g in cmap.groups if g.prunable]
    pruned = {g.id for g in prunable[::3]}  # a third of the groups, the shortcut's among them
    small = shrink(fold_pruned_(copy.deepcopy(dense), pruned, cmap), pruned, cmap).eval()
    calib = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    test = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = dense(test)
        before = (small(test) - want).pow(2).mean()
        reconstruct_(small, dense, calib, pruned, cmap, ridge=1e-4)
        after = (small(test) - want).pow(2).mean()
    assert after < 0.5 * before
    # nothing pruned: the refit finds the weights it started from
    same = copy.deepcopy(dense)
    with torch.no_grad():
        reconstruct_(same, dense, calib, set(), cmap, ridge=1e-4)
        torch.testing.assert_close(same(test), want, atol=1e-3, rtol=1e-3)
