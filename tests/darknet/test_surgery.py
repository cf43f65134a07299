"""Channel groups and physical removal of channels through routes, shortcuts and depthwise convs."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.darknet.channels import build_channel_map
from yolo_prune.darknet.surgery import fold_pruned_, shrink
from yolo_prune.errors import PruneError


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("yolov4.cfg", 256),
        ("yolov4-tiny.cfg", 416),
        ("yolov3.cfg", 256),
        ("yolo-fastest-1.1-xl.cfg", 320),
    ],
)
def test_masked_and_shrunk_models_agree(name, size, repo_cfg, randomize):
    model = randomize(Darknet.from_cfg(repo_cfg / name, size=size))
    cmap = build_channel_map(model.graph)
    rng = random.Random(0)
    pruned = {g.id for g in cmap.groups if g.prunable and rng.random() < 0.5}
    fold_pruned_(model, pruned, cmap)
    small = shrink(model, pruned, cmap).eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        masked, shrunk = model(x), small(x)
    assert small.graph.params < 0.5 * model.graph.params
    scale = masked.abs().max()
    torch.testing.assert_close(shrunk / scale, masked / scale, rtol=0, atol=1e-4)


def test_groups_follow_routes_shortcuts_and_depthwise(repo_cfg):
    tiny4 = build_channel_map(Darknet.from_cfg(repo_cfg / "yolov4-tiny.cfg").graph)
    # layer 3 routes the second half of layer 2 (groups=2): channel j and j+32 are tied
    by_producer = {p: g for g in tiny4.groups for p in g.producers}
    assert by_producer[(2, 5)] is by_producer[(2, 37)]
    fastest = Darknet.from_cfg(repo_cfg / "yolo-fastest-1.1-xl.cfg")
    cmap = build_channel_map(fastest.graph)
    by_producer = {p: g for g in cmap.groups for p in g.producers}
    dw = next(i for i, s in enumerate(fastest.graph.layers) if s.extra.get("groups", 1) > 1)
    assert by_producer[(dw - 1, 3)] is by_producer[(dw, 3)]  # depthwise output k = its input k
    v4 = Darknet.from_cfg(repo_cfg / "yolov4.cfg")
    cmap = build_channel_map(v4.graph)
    sc = next(s for s in v4.graph.layers if s.kind == "shortcut")
    by_producer = {p: g for g in cmap.groups for p in g.producers}
    a, b = sc.sources  # the two inputs of the first shortcut are tied channel by channel
    assert by_producer[(a, 7)] is by_producer[(b, 7)]


def test_fold_keeps_outputs_for_1x1_readers():
    """A pruned filter still emits act(BN shift); folding it into a 1x1 reader is exact."""
    model = Darknet.from_cfg_text(
        "[net]\nwidth=8\nheight=8\nchannels=3\n"
        "[convolutional]\nbatch_normalize=1\nfilters=6\nsize=3\npad=1\nactivation=mish\n"
        "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=1\nactivation=leaky\n"
        "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
        model.layers[0].bn.running_var.uniform_(0.5, 1.5)
    cmap = build_channel_map(model.graph)
    pruned = {g.id for g in cmap.groups if (0, 1) in g.producers or (0, 4) in g.producers}
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.layers[0].conv.weight[[1, 4]] = 0  # what the pruning mask leaves behind
        zeroed.layers[0].bn.running_mean[[1, 4]] = 0  # a zero filter's batch mean
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = zeroed(x)
        fold_pruned_(model, pruned, cmap)
        got = model(x)
        small = shrink(model, pruned, cmap)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(small(x), expected)
    assert small.layers[0].conv.out_channels == 4 and small.layers[1].conv.in_channels == 4


def test_protected_groups_are_refused_with_the_reason(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg")
    cmap = build_channel_map(model.graph)
    head = next(g for g in cmap.groups if (15, 0) in g.producers)
    assert not head.prunable
    with pytest.raises(
        PruneError, match=r"channel 0 of layer 15 cannot be pruned: it feeds the \[yolo\] layer 16"
    ):
        shrink(model, {head.id}, cmap)


def test_shrunk_model_round_trips_through_cfg_and_weights(repo_cfg, tmp_path, randomize):
    from yolo_prune.darknet import format_cfg

    model = randomize(Darknet.from_cfg(repo_cfg / "yolov4-tiny.cfg"))
    cmap = build_channel_map(model.graph)
    pruned = {g.id for g in cmap.groups if g.prunable and g.id % 3 == 0}
    small = shrink(fold_pruned_(model, pruned, cmap), pruned, cmap).eval()
    (tmp_path / "small.cfg").write_text(format_cfg(small.sections))
    small.save_weights(tmp_path / "small.weights")
    again = Darknet.from_cfg(tmp_path / "small.cfg")
    again.load_weights(tmp_path / "small.weights")
    x = torch.rand(1, 3, 416, 416)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), small(x))


def test_engine_protocol_methods(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov4-tiny.cfg")
    assert model.prune_depth("layers.12.conv.weight") == 12
    groups = model.channel_groups()
    names = {name for grp in groups for name, _ in grp}
    assert "layers.29.conv.weight" not in names  # feeds [yolo] 30: never offered
    assert sum(len(g) for g in groups) == 3104  # producer channels in prunable groups
    # the route groups=2 tie shows up as a two-filter group
    assert [("layers.2.conv.weight", 5), ("layers.2.conv.weight", 37)] in groups
    with torch.no_grad():
        for name, ch in groups[10]:
            model.get_parameter(name)[ch] = 0
    prunable = [g for g in model.channel_map().groups if g.prunable]  # same order as groups
    assert model.zero_channel_groups() == {prunable[10].id}


def test_cut_channels_are_folded_so_training_and_eval_agree_on_them(repo_cfg, randomize):
    """After a hard cut, a zero filter's BN emits beta in training mode but beta minus
    gamma * mean / std in eval mode; folded, both modes see exactly zero there."""
    model = randomize(Darknet.from_cfg(repo_cfg / "yolov4-tiny.cfg", size=128))
    cmap = model.channel_map()
    cut = {g.id for g in cmap.groups if g.prunable and g.id % 3 == 0}
    with torch.no_grad():
        for gid in cut:
            for layer, ch in cmap.groups[gid].producers:
                model.layers[layer].conv.weight[ch].zero_()
    outputs: dict[int, torch.Tensor] = {}
    producers = {layer for gid in cut for layer, _ in cmap.groups[gid].producers}
    hooks = [model.layers[i].register_forward_hook(lambda _m, _i, out, i=i: outputs.__setitem__(i, out))
             for i in producers]  # fmt: skip
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))

    def cut_outputs(train: bool) -> torch.Tensor:
        model.train(train)
        with torch.no_grad():
            model(x)
        return torch.stack([outputs[layer][:, ch].abs().max() for gid in cut
                            for layer, ch in cmap.groups[gid].producers])  # fmt: skip

    assert float(cut_outputs(False).max()) > 0.01  # not folded: the cut channels emit constants
    assert model.fold_zero_channels_() == cut
    state = copy.deepcopy(model.state_dict())
    assert float(cut_outputs(True).max()) == 0.0
    model.load_state_dict(state)  # undo the training-mode BN statistics update
    assert float(cut_outputs(False).max()) == 0.0
    for h in hooks:
        h.remove()
