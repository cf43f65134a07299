import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from yolo_prune.errors import PruneError
from yolo_prune.prune import projections as P
from yolo_prune.prune.targets import select_targets


def _weights(case):
    model = case.model()
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in select_targets(model)}


def _pruned(masks):
    return sum(int((~m).sum()) for m in masks.values())


def _reference_global(weights, k):
    """Brute force: stable sort of all |w| (layer order, then flat index), cut the first k."""
    flat = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:k]] = False
    out, i = {}, 0
    for n, w in weights.items():
        out[n] = keep[i : i + w.numel()].reshape(w.shape)
        i += w.numel()
    return out


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.8])
def test_global_prunes_exactly_round_r_n(case, ratio):
    weights = _weights(case)
    n = sum(w.numel() for w in weights.values())
    masks = P.project_global(weights, ratio)
    assert _pruned(masks) == round(ratio * n)
    assert {k: m.shape for k, m in masks.items()} == {k: w.shape for k, w in weights.items()}
    assert all(m.dtype == torch.bool for m in masks.values())


def test_global_keeps_the_largest_magnitudes(case):
    weights = _weights(case)
    masks = P.project_global(weights, 0.7)
    kept = torch.cat([w[m].abs() for w, m in zip(weights.values(), masks.values(), strict=True)])
    cut = torch.cat([w[~m].abs() for w, m in zip(weights.values(), masks.values(), strict=True)])
    assert kept.min() >= cut.max()


def test_global_equals_brute_force_on_the_sampled_path():
    # More than 2**21 values, so the sampled-bracket selection runs, with many exact ties.
    g = torch.Generator().manual_seed(1)
    weights = {
        "a": torch.randn(1500, 1000, generator=g),
        "b": torch.randint(-3, 4, (900, 1000), generator=g).float(),
        "c": torch.randn(40, 50, generator=g) * 3,
    }
    n = sum(w.numel() for w in weights.values())
    for ratio in (0.1, 0.42, 0.9):
        k = round(ratio * n)
        masks = P.project_global(weights, ratio)
        ref = _reference_global(weights, k)
        for name in weights:
            assert torch.equal(masks[name], ref[name]), (ratio, name)


def test_ties_go_to_the_first_layer_then_lowest_index():
    weights = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    masks = P.project_global(weights, 0.5)  # 5 of 10
    assert masks["a"].tolist() == [[False, False, False], [False, False, True]]
    assert masks["b"].tolist() == [True, True, True, True]


def test_projection_does_not_modify_its_input(case):
    weights = _weights(case)
    before = {n: w.clone() for n, w in weights.items()}
    for name in P.PROJECTIONS:
        P.get_projection(name)(weights, 0.5)
    for n in weights:
        torch.testing.assert_close(weights[n], before[n], rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=5),
    ratio=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**16),
)
def test_global_exact_count_property(sizes, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    weights = {f"w{i}": torch.randn(s, generator=g).round(decimals=1) for i, s in enumerate(sizes)}
    n = sum(sizes)
    k = round(ratio * n)
    try:
        masks = P.project_global(weights, ratio)
    except PruneError as exc:
        # Only legitimate failure: the cut empties a layer.
        ref = _reference_global(weights, k)
        assert any(not m.any() for m in ref.values()), exc
        return
    assert _pruned(masks) == k
    ref = _reference_global(weights, k)
    assert all(torch.equal(masks[name], ref[name]) for name in weights)


def test_layerwise_prunes_exactly_per_layer(case):
    weights = _weights(case)
    masks = P.project_layerwise(weights, 0.6)
    for n, w in weights.items():
        assert int((~masks[n]).sum()) == round(0.6 * w.numel())
    names = list(weights)
    ratios = {n: (0.2 if i % 2 else 0.7) for i, n in enumerate(names)}
    masks = P.project_layerwise(weights, ratios)
    for n, w in weights.items():
        assert int((~masks[n]).sum()) == round(ratios[n] * w.numel())


def test_layerwise_ratio_mapping_must_cover_every_layer(case):
    weights = _weights(case)
    first = next(iter(weights))
    with pytest.raises(PruneError, match="no ratio given for"):
        P.project_layerwise(weights, {first: 0.5})


@pytest.mark.parametrize(
    ("name", "dims"),
    [("layer-filters", (0,)), ("layer-inputs", (1,)), ("layer-shapes", None)],
)
def test_structured_groups_are_all_zero_or_all_kept(case, name, dims):
    weights = _weights(case)
    ratio = 0.5
    masks = P.get_projection(name)(weights, ratio)
    for n, w in weights.items():
        m = masks[n]
        group_dims = dims if dims is not None else tuple(range(1, w.dim()))
        reduce = [d for d in range(w.dim()) if d not in group_dims]
        pruned_groups = (~m).all(dim=reduce) if reduce else ~m
        kept_groups = m.all(dim=reduce) if reduce else m
        # every group is wholly pruned or wholly kept, and exactly round(r * groups) go
        assert torch.equal(pruned_groups, ~kept_groups)
        assert int(pruned_groups.sum()) == round(ratio * pruned_groups.numel())
        masked = w * m
        assert torch.all(masked[~m] == 0)


def test_filter_pruning_removes_the_weakest_filters():
    w = torch.stack([torch.full((2, 3, 3), float(v)) for v in (3, -1, 5, 0.5, 2)])
    masks = P.project_filters({"w": w}, 0.4)  # 2 of 5 filters
    assert masks["w"][:, 0, 0, 0].tolist() == [True, False, True, False, True]
    l1 = P.project_filters({"w": w}, 0.4, norm="l1")
    assert torch.equal(l1["w"], masks["w"])


def test_caps_bound_each_layer_and_keep_the_total_exact(case):
    weights = _weights(case)
    names = list(weights)
    caps = {names[0]: 0.2}
    if len(names) > 1:
        caps[names[1]] = 0.5
    n = sum(w.numel() for w in weights.values())
    room = sum(math.floor(caps.get(k, 1.0) * w.numel()) for k, w in weights.items())
    ratio = min(0.6, 0.9 * room / n)
    masks = P.project_global(weights, ratio, caps=caps)
    assert _pruned(masks) == round(ratio * n)
    for k, c in caps.items():
        assert int((~masks[k]).sum()) <= math.floor(c * weights[k].numel())


def test_caps_that_cannot_hold_the_ratio_are_an_error():
    weights = {"a": torch.randn(100), "b": torch.randn(100)}
    with pytest.raises(PruneError, match=r"the per-layer caps allow at most 100 \(0\.5000\)"):
        P.project_global(weights, 0.6, caps={"a": 0.0})


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan"), "abc"])
def test_ratio_outside_unit_interval_is_an_error(ratio):
    with pytest.raises(PruneError, match=r"(outside \[0, 1\)|is not a number)"):
        P.project_global({"a": torch.randn(10)}, ratio)


def test_unknown_projection_is_an_error():
    with pytest.raises(
        PruneError,
        match="unknown projection 'glob'; choose one of: global, global-channels, global-lamp, ",
    ):
        P.get_projection("glob")
    with pytest.raises(PruneError, match="projection 'filter' is now called 'layer-filters'"):
        P.get_projection("filter")


def test_unknown_norm_is_an_error():
    with pytest.raises(PruneError, match="unknown norm 'l3'; choose one of: l1, l2"):
        P.get_projection("layer-filters", norm="l3")


def test_global_ratio_that_empties_a_layer_is_an_error():
    weights = {"big": torch.randn(1000) * 10, "tiny": torch.full((10,), 1e-3)}
    with pytest.raises(PruneError, match=r"global ratio 0\.5 would remove all 10 weights of tiny"):
        P.project_global(weights, 0.5)


def test_layer_ratio_that_empties_a_layer_is_an_error():
    with pytest.raises(PruneError, match="would remove all 3 weights of a"):
        P.project_layerwise({"a": torch.randn(3), "b": torch.randn(100)}, 0.9)


def test_filter_ratio_that_empties_a_layer_is_an_error():
    with pytest.raises(PruneError, match="would remove all 2 filters of w"):
        P.project_filters({"w": torch.randn(2, 3, 3, 3)}, 0.8)


def test_kth_smallest_matches_sort_and_leaves_global_rng_alone():
    g = torch.Generator().manual_seed(3)
    values = [torch.randn(1 << 20, generator=g), torch.randn(5000, generator=g)]
    flat = torch.cat(values).abs().sort().values
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    for k in (1, 1000, 1 << 19, flat.numel()):
        assert P.kth_smallest(values, k) == flat[k - 1].item()
    assert torch.equal(torch.rand(1), expected_next)


def test_many_ties_at_zero_on_the_sampled_path():
    # An already-pruned model re-projected: most weights are exactly zero.
    g = torch.Generator().manual_seed(4)
    w = torch.randn(1 << 20, generator=g)
    w[torch.rand(w.shape, generator=g) < 0.8] = 0.0
    weights = {"a": w, "b": torch.zeros(1000), "c": torch.randn(1000, generator=g)}
    n = sum(x.numel() for x in weights.values())
    for ratio in (0.5, 0.79, 0.9):
        k = round(ratio * n)
        if ratio < 0.8:
            # zeros fill the cut; "b" (all zeros) would be emptied only if k reached it
            masks = P.project_global(weights, ratio)
            ref = _reference_global(weights, k)
            assert all(torch.equal(masks[x], ref[x]) for x in weights)
        else:
            with pytest.raises(PruneError, match="would remove all 1,000 weights of b"):
                P.project_global(weights, ratio)


def test_smallest_k_respects_candidates():
    v = torch.tensor([0.1, 0.2, 0.3, 0.4])
    cand = torch.tensor([False, True, False, True])
    (m,) = P.smallest_k([v], 1, candidates=[cand])
    assert m.tolist() == [False, True, False, False]


def test_lamp_scores_are_the_paper_formula_by_brute_force():
    # score(u) = w_u^2 / sum of w_v^2 over every v with |w_v| >= |w_u| (no ties here).
    w = torch.tensor([[0.5, -2.0], [1.0, -0.1]])
    sq = w.flatten().pow(2)
    want = torch.stack([sq[i] / sq[sq >= sq[i]].sum() for i in range(4)]).view(2, 2)
    assert torch.allclose(P.lamp_scores(w), want)
    assert P.lamp_scores(w).max() == 1.0  # a layer's largest weight scores 1


def test_global_lamp_keeps_magnitude_order_within_a_layer_but_moves_the_shares():
    # Layer "small" has weights 100x smaller than "big": global magnitude empties it first,
    # LAMP prunes each layer in proportion to how its energy is spread (here: the same shape,
    # so about the same fraction of each).
    g = torch.Generator().manual_seed(0)
    weights = {"big": torch.randn(400, generator=g), "small": torch.randn(400, generator=g) / 100}
    with pytest.raises(PruneError, match="would remove all"):
        P.project_global(weights, 0.6)
    masks = P.get_projection("global-lamp")(weights, 0.6)
    assert _pruned(masks) == 480
    assert 0.4 < (~masks["small"]).float().mean() < 0.8
    for n, w in weights.items():  # within a layer the largest |w| are the ones kept
        assert w[masks[n]].abs().min() >= w[~masks[n]].abs().max()


def test_global_lamp_respects_caps(case):
    weights = _weights(case)
    first = next(iter(weights))
    masks = P.project_global_lamp(weights, 0.7, caps={first: 0.1})
    n = sum(w.numel() for w in weights.values())
    assert _pruned(masks) == round(0.7 * n)
    assert int((~masks[first]).sum()) <= math.floor(0.1 * weights[first].numel())
