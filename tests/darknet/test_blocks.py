"""Depth pruning: which residual branches can go whole, and the shallower network without them."""

from __future__ import annotations

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.darknet.blocks import ResidualBlock, drop_blocks, find_residual_blocks, silence_
from yolo_prune.darknet.surgery import shrink_zeroed
from yolo_prune.errors import PruneError

# trunk 0; block A = layers 1-2 + shortcut 3; block B = layers 4-5 + shortcut 6, whose branch
# ends in a logistic (not zero at zero); block C = 7-8 + shortcut 9; a route reading the
# shortcut 3 by absolute index and shortcut 9 relatively, then a head.
CFG = """
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=linear

[shortcut]
from=-3
activation=linear

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=logistic

[shortcut]
from=-3
activation=linear

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[dropout]
probability=.2

[shortcut]
from=-3
activation=linear

[route]
layers=3,-1

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=4,6, 8,10, 14,12
classes=2
num=3
"""


def _model(randomize) -> Darknet:
    return randomize(Darknet.from_cfg_text(CFG)).eval()


def _remove_(model: Darknet, blocks) -> None:
    with torch.no_grad():
        for b in blocks:
            for i in b.convs:
                model.layers[i].conv.weight.zero_()


def test_the_removable_branches_are_found(repo_cfg):
    blocks = find_residual_blocks(Darknet.from_cfg_text(CFG).graph)
    # B ends in a logistic (0.5 at zero); A and C qualify, C through its dropout
    assert [(b.trunk, b.shortcut, b.convs) for b in blocks] == [(0, 3, (1, 2)), (6, 9, (7,))]
    assert blocks[1].output == 7 and list(blocks[1].layers) == [7, 8, 9]
    fastest = find_residual_blocks(Darknet.from_cfg(repo_cfg / "yolo-fastest-1.1-xl.cfg").graph)
    assert len(fastest) == 18 and fastest[0].shortcut == 8 and fastest[0].convs == (4, 5, 6)
    assert find_residual_blocks(Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg").graph) == []


def test_a_branch_read_from_outside_is_not_removable():
    text = CFG.replace("[route]\nlayers=3,-1", "[route]\nlayers=1,-1")  # reads inside block A
    blocks = find_residual_blocks(Darknet.from_cfg_text(text).graph)
    assert [b.shortcut for b in blocks] == [9]


@pytest.mark.parametrize("which", [(3,), (9,), (3, 9)])
def test_dropping_blocks_computes_what_the_silenced_model_computes(which, randomize):
    model = _model(randomize)
    blocks = [b for b in find_residual_blocks(model.graph) if b.shortcut in which]
    _remove_(model, blocks)
    silence_(model, blocks)
    small = drop_blocks(model, blocks).eval()
    assert len(small.layers) == len(model.layers) - sum(len(b.layers) for b in blocks)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=0)
    # the route that read shortcut 3 by its absolute index now reads block A's trunk (layer 0)
    route = next(s for s in small.graph.layers if s.kind == "route")
    assert route.sources[0] == (0 if 3 in which else 3)


def test_silenced_branch_stays_zero_in_training(randomize):
    model = _model(randomize).train()
    block = find_residual_blocks(model.graph)[0]
    _remove_(model, [block])
    silence_(model, [block])
    bn = model.layers[block.output].bn
    assert not bn.weight.requires_grad and not bn.bias.requires_grad
    outs = []
    hook = model.layers[block.output].register_forward_hook(lambda _m, _i, o: outs.append(o))
    sum(h.sum() for h in model(torch.rand(2, 3, 32, 32))).backward()
    hook.remove()
    assert not outs[0].any()


def test_shrink_zeroed_removes_blocks_and_channels_together(randomize):
    model = _model(randomize)
    block = find_residual_blocks(model.graph)[1]  # block C
    _remove_(model, [block])
    with torch.no_grad():
        model.layers[1].conv.weight[:8] = 0  # half of block A's expansion: a channel cut
    assert [b.shortcut for b in model.dropped_blocks()] == [9]
    # the internal groups of the dropped block are not channel groups to cut: the block goes whole
    inside = set(block.layers)
    cmap = model.channel_map()
    assert all(not set(p for p, _ in cmap.groups[g].producers) <= inside
               for g in model.zero_channel_groups())  # fmt: skip
    small = shrink_zeroed(model)
    model.fold_zero_channels_()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    assert len(small.layers) == len(model.layers) - 3
    assert small.layers[1].conv.weight.shape[0] == 8


def test_an_unknown_block_is_refused(randomize):
    model = _model(randomize)
    fake = ResidualBlock(trunk=1, shortcut=3, convs=(2,), output=2, bflops=0.0)
    with pytest.raises(PruneError, match="not a removable residual block"):
        drop_blocks(model, [fake])


def test_a_cut_of_whole_blocks_alone_is_refitted_at_the_cut(randomize):
    """refit_pruned_ with no channel group cut but a block dropped (depth: only) refits the
    rest of the network there and then, rather than doing nothing (the job would then refit at
    the end, after the fine-tuning, and undo it); the dropped branch stays silent and the model
    computes what its shrunk form computes."""
    dense = _model(randomize)
    model = _model(randomize)
    model.load_state_dict(dense.state_dict())
    block = find_residual_blocks(model.graph)[1]  # block C
    _remove_(model, [block])
    assert model.zero_channel_groups() == set()
    before = [p.detach().clone() for p in model.parameters()]
    calib = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert model.refit_pruned_(dense, calib) is True
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert any(changed)
    assert not model.layers[block.output].conv.weight.any()
    assert not model.layers[block.output].bn.weight.any()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(shrink_zeroed(model)(x), model.eval()(x), rtol=1e-5, atol=1e-5)
