"""Residual blocks in the structured ranking (``depth: true``): the projection, the Fisher
importance of a whole output, and the options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yolo_prune.darknet import Darknet
from yolo_prune.errors import PruneError
from yolo_prune.prune.importance import fisher_channel_scores, whole_key
from yolo_prune.prune.registry import build_pruner
from yolo_prune.prune.structured import build_projection, model_blocks, project_channel_groups
from yolo_prune.prune.targets import TargetConfig, select_targets


def _weights():
    torch.manual_seed(0)
    return {n: torch.randn(4, 2, 1, 1) for n in ("a", "b", "c")}


def _groups():
    return [[(n, c)] for n in ("a", "b", "c") for c in range(4)]


def test_a_block_with_the_lowest_score_goes_whole():
    weights = _weights()
    scores = {"a": torch.full((4,), 5.0), "b": torch.full((4,), 3.0), "c": torch.full((4,), 4.0)}
    block = ([("b", c) for c in range(4)] + [("c", c) for c in range(4)], 1.0)
    masks = project_channel_groups(weights, _groups(), 0.5, scores=scores, normalize=False,
                                   blocks=[block])  # fmt: skip
    # the block (8 filters) meets 0.5 of 12 channels alone; layers b and c are emptied
    assert masks["a"].all() and not masks["b"].any() and not masks["c"].any()


def test_without_blocks_no_layer_is_emptied_and_blocks_respect_caps():
    weights = _weights()
    scores = {"a": torch.full((4,), 5.0), "b": torch.full((4,), 3.0), "c": torch.full((4,), 4.0)}
    plain = project_channel_groups(weights, _groups(), 0.5, scores=scores, normalize=False)
    assert all(m.reshape(4, -1).any(1).sum() >= 1 for m in plain.values())
    block = ([("b", c) for c in range(4)] + [("c", c) for c in range(4)], 1.0)
    caps = {"b": 0.9}
    capped = project_channel_groups(weights, _groups(), 0.5, scores=scores, normalize=False,
                                    blocks=[block], caps=caps)  # fmt: skip
    alone = project_channel_groups(weights, _groups(), 0.5, scores=scores, normalize=False,
                                   caps=caps)  # fmt: skip
    assert all(torch.equal(capped[n], alone[n]) for n in alone)  # the block never went
    assert all(m.any() for m in capped.values())


def test_a_block_counts_only_the_filters_not_already_gone():
    weights = _weights()
    # channel 0 of b is the least important unit; then the block; the ratio asks for 8 of 12
    scores = {
        "a": torch.full((4,), 5.0),
        "b": torch.tensor([0.1, 3, 3, 3]),
        "c": torch.full((4,), 4.0),
    }
    block = ([("b", c) for c in range(4)] + [("c", c) for c in range(4)], 1.0)
    masks = project_channel_groups(weights, _groups(), 8 / 12, scores=scores, normalize=False,
                                   blocks=[block])  # fmt: skip
    assert masks["a"].all()  # 1 + 7 new filters meet the 8: nothing of layer a goes
    assert not masks["b"].any() and not masks["c"].any()


def test_whole_output_fisher_is_the_square_of_the_summed_gates():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Conv2d(3, 1, 1))
    batches = [torch.randn(4, 2, 5, 5) for _ in range(3)]

    def loss(model, x):
        return model(x).pow(2).mean()

    scores = fisher_channel_scores(net, ["0.weight"], batches, loss)
    whole = scores[whole_key("0.weight")]
    assert whole.shape == (1,) and float(whole) > 0
    # by hand: one gate on the whole output of layer 0
    total = 0.0
    for x in batches:
        gate = torch.ones((), requires_grad=True)
        out = net[1](net[0](x) * gate).pow(2).mean()
        for i in range(x.shape[0]):  # per-sample gradient of the mean loss, times the batch
            g = torch.autograd.grad(net[1](net[0](x[i : i + 1]) * gate).pow(2).mean(), gate)[0]
            total += float(g) ** 2
        del out
    assert float(whole) == pytest.approx(total / len(batches), rel=1e-4)


def test_depth_puts_the_blocks_of_a_darknet_model_in_the_ranking(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolo-fastest-1.1-xl.cfg", size=96)
    names = select_targets(model, TargetConfig())
    blocks = model_blocks(model, names)
    assert len(blocks) == 18
    members, output, gflops = blocks[0]
    assert output == "layers.6.conv.weight" and gflops > 0
    assert {n for n, _ in members} == {f"layers.{i}.conv.weight" for i in (4, 5, 6)}

    def importance(net, wanted):  # block 0 costs nothing, every channel a lot
        out = {n: torch.full((net.get_parameter(n).shape[0],), 1e3) for n in wanted}
        out.update({whole_key(n): torch.tensor([1e3]) for n in wanted})
        out[whole_key("layers.6.conv.weight")] = torch.tensor([0.0])
        return out

    project = build_projection(model, names, "global-channels", criterion="fisher",
                               importance=importance, cost="flops", depth=True)  # fmt: skip
    weights = {n: model.get_parameter(n) for n in names}
    masks = project(weights, 0.003)  # 0.3% of the FLOPs: block 8 (2.9% of them) alone
    assert not any(masks[f"layers.{i}.conv.weight"].any() for i in (4, 5, 6))
    with torch.no_grad():
        for n, m in masks.items():
            weights[n].mul_(m)
    assert [b.shortcut for b in model.dropped_blocks()] == [8]


def test_depth_needs_the_fisher_criterion():
    with pytest.raises(PruneError, match="criterion 'fisher'"):
        build_pruner("admm-filter", {"ratio": 0.3, "criterion": "l1", "depth": True})
    build_pruner("channel", {"ratio": 0.3, "depth": True})  # fisher is the default


def test_with_sizes_the_ratio_counts_shares_of_the_model():
    """``sizes``: the ratio is a share of the model's cost; a block counts its own share."""
    weights = _weights()
    scores = {"a": torch.full((4,), 1.0), "b": torch.full((4,), 3.0), "c": torch.full((4,), 4.0)}
    sizes = {"a": torch.full((4,), 0.05), "b": torch.full((4,), 0.05), "c": torch.full((4,), 0.05)}
    block = ([("b", c) for c in range(4)] + [("c", c) for c in range(4)], 2.0)
    # 0.1 of the cost: two filters of a (0.05 each); the block's score 2 ranks after them
    masks = project_channel_groups(weights, _groups(), 0.1, scores=scores, normalize=False,
                                   sizes=sizes, blocks=[block], block_sizes=[0.6])  # fmt: skip
    assert int((~masks["a"].reshape(4, -1).all(1)).sum()) == 2
    assert masks["b"].all() and masks["c"].all()
    # 0.5: all of a (3 filters, the one-filter floor keeps the last: 0.15), then the block,
    # which counts 0.6 though its filters would sum to 0.4
    masks = project_channel_groups(weights, _groups(), 0.5, scores=scores, normalize=False,
                                   sizes=sizes, blocks=[block], block_sizes=[0.6])  # fmt: skip
    assert not masks["b"].any() and not masks["c"].any()
    with pytest.raises(PruneError, match="1 blocks but 0 block sizes"):
        project_channel_groups(weights, _groups(), 0.5, scores=scores, normalize=False,
                               sizes=sizes, blocks=[block])  # fmt: skip


def test_an_unknown_cost_is_refused():
    with pytest.raises(PruneError, match="unknown cost 'time'"):
        build_pruner("channel", {"ratio": 0.3, "cost": "time"})


def test_cost_applies_to_channel_groups_only(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=64)
    names = select_targets(model, TargetConfig())
    with pytest.raises(PruneError, match="cost and depth apply to the 'global-channels'"):
        build_projection(model, names, "global", cost="flops")


def _block_importance(net, wanted):  # every block's loss rise equal: per FLOP, the big go first
    out = {n: torch.full((net.get_parameter(n).shape[0],), 1e-6) for n in wanted}
    out.update({whole_key(n): torch.tensor([1.0]) for n in wanted})
    return out


def test_depth_only_cuts_whole_blocks_and_no_channel(repo_cfg):
    """``depth: only``: however cheap the channels look, only whole residual blocks go, until
    their FLOPs meet the ratio (to within one block)."""
    model = Darknet.from_cfg(repo_cfg / "yolo-fastest-1.1-xl.cfg", size=96)
    names = select_targets(model, TargetConfig())
    blocks = model_blocks(model, names)
    in_blocks = {n for members, _, _ in blocks for n, _ in members}
    project = build_projection(model, names, "global-channels", criterion="fisher",
                               importance=_block_importance, cost="flops",
                               depth="only")  # fmt: skip
    weights = {n: model.get_parameter(n) for n in names}
    masks = project(weights, 0.2)
    assert all(masks[n].all() for n in names if n not in in_blocks)  # no channel cut outside
    gone = [(members, g) for members, _, g in blocks if not masks[members[0][0]].any()]
    for members, _ in gone:  # a block goes whole or not at all
        assert not any(masks[n].any() for n, _ in members)
    kept = [members for members, _, _ in blocks if masks[members[0][0]].all()]
    assert len(gone) + len(kept) == len(blocks)
    share = sum(g for _, g in gone) / model.gflops()
    biggest = max(g for _, _, g in blocks) / model.gflops()
    assert 0.2 <= share < 0.2 + biggest
    whole = sum(g for _, _, g in blocks) / model.gflops()
    with pytest.raises(PruneError, match="residual blocks that may go whole hold only"):
        project(weights, min(whole + 0.05, 0.95))


def test_depth_only_options_are_checked(repo_cfg):
    with pytest.raises(PruneError, match="depth: only .* set cost: flops"):
        build_pruner("admm-filter", {"ratio": 0.3, "depth": "only"})
    with pytest.raises(PruneError, match="depth='deep'; expected true, false or only"):
        build_pruner("channel", {"ratio": 0.3, "depth": "deep", "cost": "flops"})
    with pytest.raises(PruneError, match="criterion 'fisher'"):
        build_pruner("channel", {"ratio": 0.3, "depth": "only", "cost": "flops", "criterion": "l1"})
    tiny = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=64)  # no residual block
    names = select_targets(tiny, TargetConfig())
    with pytest.raises(PruneError, match="no residual block that may go whole"):
        build_projection(tiny, names, "global-channels", criterion="fisher",
                         importance=_block_importance, cost="flops", depth="only")  # fmt: skip
