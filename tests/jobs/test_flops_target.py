"""--flops: the ratio is searched so the shrunk model keeps the asked fraction of the FLOPs."""

from __future__ import annotations

import pytest

from yolo_prune.darknet import Darknet
from yolo_prune.errors import ConfigError
from yolo_prune.jobs.prune import ratio_for_flops, shrunk_gflops
from yolo_prune.prune.registry import build_pruner


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("channel", {"criterion": "l1"}),
        ("admm-filter", {"criterion": "l1", "policy": {"first_cap": 0.2, "last_cap": 0.5}}),
    ],
)
def test_ratio_for_flops_lands_within_the_tolerance(repo_cfg, method, options):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=320)
    pruner = build_pruner(method, {"ratio": 0.3, **options})
    ratio, fraction = ratio_for_flops(pruner, model, 0.65, importance=None)
    assert fraction == pytest.approx(0.65, abs=0.005)
    # the planned cut at that ratio is what the report will count
    dense = shrunk_gflops(model, {})
    masks = pruner.plan(model, ratio)
    assert shrunk_gflops(model, masks) / dense == pytest.approx(fraction)
    assert not any(bool((~m).any()) for m in pruner.plan(model, 0.0).values())


def test_flops_target_refused_for_unstructured_methods_and_bad_values(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=320)
    with pytest.raises(ConfigError, match="--flops needs a structured method"):
        ratio_for_flops(object(), model, 0.65, importance=None)
    pruner = build_pruner("channel", {"ratio": 0.3, "criterion": "l1"})
    with pytest.raises(ConfigError, match=r"--flops 1.5; expected a fraction"):
        ratio_for_flops(pruner, model, 1.5, importance=None)
    capped = build_pruner("channel", {"ratio": 0.3, "criterion": "l1",
                                      "policy": {"first_cap": 0.0, "last_cap": 0.05}})  # fmt: skip
    with pytest.raises(ConfigError, match="no ratio of this method reaches it within 2%"):
        ratio_for_flops(capped, model, 0.3, importance=None)


def test_channel_flops_is_what_removing_a_group_saves(repo_cfg):
    from yolo_prune.darknet.surgery import shrink

    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=320)
    costs = model.channel_flops()
    dense = shrunk_gflops(model, {})
    prunable = [g for g in model.channel_map().groups if g.prunable]
    for grp in (prunable[0], prunable[len(prunable) // 2], prunable[-1]):
        layer, ch = grp.producers[0]
        cost = float(costs[f"layers.{layer}.conv.weight"][ch]) * len(grp.producers)
        saved = dense - sum(s.bflops for s in shrink(model, {grp.id}).graph.layers)
        assert saved == pytest.approx(cost, rel=0.05)


def test_per_flop_ranking_spends_a_flops_budget_on_fewer_important_channels(repo_cfg):
    """At the same FLOPs, ranking by importance per FLOP removes fewer channels than ranking
    by importance alone (it takes the expensive ones first), and its ratio counts FLOPs."""
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=320)
    removed = {}
    for cost in ("channels", "flops"):
        pruner = build_pruner("channel", {"ratio": 0.3, "criterion": "l1", "cost": cost})
        ratio, fraction = ratio_for_flops(pruner, model, 0.6, importance=None)
        assert fraction == pytest.approx(0.6, abs=0.005)
        masks = pruner.plan(model, ratio)
        removed[cost] = sum(int((~m.reshape(m.shape[0], -1).all(1)).sum()) for m in masks.values())
        if cost == "flops":  # each channel's share counted as if it went alone: where both
            # ends of a weight go it is counted twice, so the ratio is above the 40% gone
            assert 0.4 < ratio < 0.8
    assert removed["flops"] < removed["channels"]


def test_binding_caps_lists_the_layers_held_back():
    import torch

    from yolo_prune.jobs.prune import binding_caps

    a = torch.ones(10, 3, 3, 3, dtype=torch.bool)
    a[:2] = False  # 20% of the filters: at its cap of 0.2
    b = torch.ones(10, 3, 3, 3, dtype=torch.bool)
    b[:1] = False  # 10%: under its cap of 0.5
    rows = binding_caps({"a": a, "b": b}, {"a": 0.2, "b": 0.5})
    assert rows == [{"name": "a", "cap": 0.2, "pruned": pytest.approx(0.2)}]
    assert binding_caps({"a": a}, None) is None


def test_binding_caps_count_a_structured_cut_in_its_channel_multiples():
    """With round_to 8 a 32-filter layer capped at 70% (22 filters) stops at 16 pruned: the
    next run of 8 would pass the cap, so the cap held it back; at round_to 1 it did not."""
    import torch

    from yolo_prune.jobs.prune import binding_caps

    a = torch.ones(32, 8, 1, 1, dtype=torch.bool)
    a[:16] = False
    assert binding_caps({"a": a}, {"a": 0.7}) == []
    rows = binding_caps({"a": a}, {"a": 0.7}, round_to=8)
    assert rows == [{"name": "a", "cap": 0.7, "pruned": pytest.approx(0.5)}]
    b = torch.ones(32, 8, 1, 1, dtype=torch.bool)
    b[:8] = False  # 25%: a second run of 8 (50%) was still allowed
    assert binding_caps({"b": b}, {"b": 0.7}, round_to=8) == []
    c = torch.ones(8, 8, 1, 1, dtype=torch.bool)  # a run of 8 would empty it: no cap needed
    assert binding_caps({"c": c}, {"c": 0.7}, round_to=8) == []


def test_a_removed_residual_block_leaves_the_shrunk_model_and_its_flops(tiny_cfg, tmp_path,
                                                                         randomize):  # fmt: skip
    import torch

    from yolo_prune.jobs.prune import removed_blocks, shrink_pruned

    model = randomize(Darknet.from_cfg(tiny_cfg)).eval()
    assert removed_blocks(model) == []
    dense = shrunk_gflops(model, {})
    masks = {f"layers.{i}.conv.weight": torch.zeros_like(model.get_parameter(
        f"layers.{i}.conv.weight"), dtype=torch.bool) for i in (3, 4)}  # fmt: skip
    assert shrunk_gflops(model, masks) < dense
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask)
    assert removed_blocks(model) == ["3-5"]
    small, files = shrink_pruned(model, tmp_path)
    assert len(small.layers) == len(model.layers) - 3
    assert (tmp_path / "pruned-shrunk.cfg").read_text().count("[shortcut]") == 0
    model.fold_zero_channels_()
    x = torch.rand(1, 3, *model.input_shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=0)
    assert (
        abs(float(sum(s.bflops for s in small.graph.layers)) - shrunk_gflops(model, masks)) < 1e-9
    )
