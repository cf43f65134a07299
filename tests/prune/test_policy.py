import pytest
import torch

from yolo_prune.errors import PruneError
from yolo_prune.prune.base import prepare_targets, target_weights
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.projections import project_global
from yolo_prune.prune.targets import TargetConfig


def test_caps_rise_linearly_with_depth_to_the_backbone_end():
    names = ["a", "b", "c", "d", "e"]
    depths = {n: i for i, n in enumerate(names)}
    caps = ConservativePolicy(first_cap=0.5, last_cap=1.0, backbone_end=2).caps(names, depths)
    assert caps == pytest.approx({"a": 0.5, "b": 0.75, "c": 1.0, "d": 1.0, "e": 1.0})


def test_backbone_end_by_name_prefix_and_overrides():
    names = ["layers.0.conv.weight", "layers.2.conv.weight", "layers.10.conv.weight"]
    depths = {"layers.0.conv.weight": 0, "layers.2.conv.weight": 2, "layers.10.conv.weight": 10}
    policy = ConservativePolicy(
        first_cap=0.2, last_cap=0.9, backbone_end="layers.2", overrides={"layers.10.*": 0.5}
    )
    caps = policy.caps(names, depths)
    assert caps == pytest.approx(
        {"layers.0.conv.weight": 0.2, "layers.2.conv.weight": 0.9, "layers.10.conv.weight": 0.5}
    )


def test_curve_keeps_caps_low_for_longer():
    names = ["a", "b", "c"]
    depths = {n: i for i, n in enumerate(names)}
    lin = ConservativePolicy(first_cap=0.0, last_cap=1.0).caps(names, depths)
    sq = ConservativePolicy(first_cap=0.0, last_cap=1.0, curve=2.0).caps(names, depths)
    assert sq["b"] == pytest.approx(0.25) and lin["b"] == pytest.approx(0.5)


def test_unknown_backbone_end_is_an_error():
    with pytest.raises(PruneError, match="policy.backbone_end 'layers.99' matches no target"):
        ConservativePolicy(backbone_end="layers.99").caps(
            ["layers.1.conv.weight"], {"layers.1.conv.weight": 1}
        )


def test_bad_policy_values():
    with pytest.raises(PruneError, match=r"policy.first_cap=1.5 is outside \[0, 1\]"):
        ConservativePolicy(first_cap=1.5)
    with pytest.raises(PruneError, match="matches no target"):
        ConservativePolicy(overrides={"zzz": 0.5}).caps(["a"], {"a": 0})


def test_conservative_policy_spares_early_layers_at_the_same_global_ratio(case):
    """Against plain global top-k: same exact total, the first layer loses at most its cap."""
    model = case.model()
    names, _ = prepare_targets(model, TargetConfig(), None)
    weights = {n: w.detach().clone() for n, w in target_weights(model, names).items()}
    weights[names[0]] *= 0.5  # smaller early weights: plain top-k cuts deep there
    ratio = 0.6
    plain = project_global(weights, ratio)

    def frac(masks, n):
        return int((~masks[n]).sum()) / masks[n].numel()

    first = names[0]
    assert frac(plain, first) > 0.1
    policy = ConservativePolicy(first_cap=frac(plain, first) / 2, last_cap=1.0)
    _, caps = prepare_targets(model, TargetConfig(), policy)
    conservative = project_global(weights, ratio, caps=caps)
    total = sum(w.numel() for w in weights.values())
    for masks in (plain, conservative):
        assert sum(int((~m).sum()) for m in masks.values()) == round(ratio * total)
    assert frac(conservative, first) <= caps[first] < frac(plain, first)
    for n in names:
        assert frac(conservative, n) <= caps[n] + 1e-12


def test_plain_global_would_empty_the_gutted_first_layer(case):
    model = case.model()
    names, _ = prepare_targets(model, TargetConfig(), None)
    weights = {n: w.detach().clone() for n, w in target_weights(model, names).items()}
    weights[names[0]] *= 0.01
    with pytest.raises(PruneError, match=f"would remove all .* weights of {names[0]}"):
        project_global(weights, 0.6)
    assert torch.isfinite(weights[names[0]]).all()
