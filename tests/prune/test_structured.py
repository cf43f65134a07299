"""Structured pruning of channel groups at one global ratio, on a Darknet detector and a
torchvision ResNet, and the smoke test that a shrunk real detector still sees the dog."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from yolo_prune.darknet import Darknet
from yolo_prune.darknet.surgery import fold_pruned_, shrink
from yolo_prune.engine import Trainer
from yolo_prune.errors import ConfigError, PruneError
from yolo_prune.prune.projections import get_projection
from yolo_prune.prune.registry import build_config, build_pruner
from yolo_prune.prune.structured import (
    build_projection,
    filter_scores,
    model_channel_groups,
    project_channel_groups,
)
from yolo_prune.prune.targets import TargetConfig, select_targets


def _prune_groups(model, ratio, caps=None, criterion="l2"):
    names = select_targets(model, TargetConfig())
    weights = {n: model.get_parameter(n) for n in names}
    groups = model_channel_groups(model, names)
    scores = filter_scores(model, names, criterion)
    masks = project_channel_groups(weights, groups, ratio, caps=caps, scores=scores)
    with torch.no_grad():
        for n, m in masks.items():
            weights[n].mul_(m)
    return groups, masks


def test_groups_on_a_darknet_detector_remove_whole_groups(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov4-tiny.cfg")
    groups, masks = _prune_groups(model, 0.3)
    total = sum(len(g) for g in groups)
    removed = [g for g in groups if not masks[g[0][0]][g[0][1]].any()]
    assert sum(len(g) for g in removed) >= round(0.3 * total)
    assert sum(len(g) for g in removed) <= round(0.3 * total) + max(len(g) for g in groups)
    for g in removed:  # every filter of a removed group is gone, and nothing else
        assert all(not masks[n][c].any() for n, c in g)
    removed_filters = sum(int((~m).reshape(m.shape[0], -1).all(1).sum()) for m in masks.values())
    assert removed_filters == sum(len(g) for g in removed)
    # the Darknet side sees exactly those groups as prunable-and-zero
    assert len(model.zero_channel_groups()) == len(removed)
    assert "layers.29.conv.weight" not in masks  # the head stays dense


def test_groups_on_a_torchvision_resnet_are_single_filters():
    model = torchvision.models.resnet18(num_classes=10)
    groups, masks = _prune_groups(model, 0.5)
    assert all(len(g) == 1 for g in groups)
    removed = sum(int((~m).reshape(m.shape[0], -1).all(1).sum()) for m in masks.values())
    assert removed == round(0.5 * len(groups))


def test_caps_hold_and_an_impossible_ratio_is_refused(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg")
    names = select_targets(model, TargetConfig())
    caps = {n: (0.1 if n == names[0] else 1.0) for n in names}
    _, masks = _prune_groups(model, 0.5, caps=caps)
    first = masks[names[0]]
    assert int((~first).reshape(first.shape[0], -1).all(1).sum()) <= 1  # floor(0.1 * 16)
    weights = {n: model.get_parameter(n) for n in names}
    groups = model_channel_groups(model, names)
    with pytest.raises(PruneError, match=r"the per-layer caps allow removing only"):
        project_channel_groups(weights, groups, 0.9, caps=dict.fromkeys(names, 0.2))
    with pytest.raises(PruneError, match=r"outside \[0, 1\)"):
        project_channel_groups(weights, groups, 1.0)


@pytest.mark.parametrize(
    ("cfg", "weights", "size"),
    [
        ("yolo-fastest-1.1-xl.cfg", "yolo-fastest-1.1-xl.weights", 320),
        ("yolov3-tiny.cfg", "yolov3-tiny.weights", 416),
    ],
)
def test_real_detector_shrunk_sees_what_the_masked_one_sees(cfg, weights, size, shared_data):
    """Surgery keeps the semantics on real weights: the shrunk model finds the dog, with the
    masked model's boxes and scores. (2% of channels, no fine-tuning: these COCO models lose
    the dog from about 10% on without fine-tuning, whatever the criterion; see the notes.)"""
    import cv2

    from yolo_prune.detect.detector import Detector

    model = Darknet.from_cfg(shared_data / "cfg" / cfg, size=size)
    model.load_weights(shared_data / "weights" / weights)
    _prune_groups(model, 0.02, criterion="l2")
    pruned = model.zero_channel_groups()
    masked = fold_pruned_(model.eval(), pruned)
    small = shrink(masked, pruned).eval()
    assert small.graph.params < model.graph.params
    image = cv2.imread(str(shared_data / "images" / "dog.jpg"))
    want = Detector(masked, conf=0.25, optimize=False)([image])[0]
    got = Detector(small, conf=0.25, optimize=False)([image])[0]
    dog = 16  # COCO-80 index of "dog"
    assert dog in got.labels.tolist()
    assert got.labels.tolist() == want.labels.tolist()
    torch.testing.assert_close(got.boxes, want.boxes, atol=0.05, rtol=1e-4)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=1e-4)


def _fit_for(model, case):
    batches = [case.batch(seed=i) for i in range(2)]

    def fit(phase, epochs, hooks):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        Trainer(model, opt, case.loss, hooks=hooks).fit(batches, epochs=epochs)

    return fit


@pytest.mark.usefixtures("flush_denormals")
@pytest.mark.parametrize(
    ("method", "options"),
    [
        (
            "admm-filter",
            {
                "epochs": 2,
                "stages": 2,
                "rho": 1e-2,
                "retrain_epochs": 1,
                "criterion": "l1",
                "policy": None,
            },
        ),  # fmt: skip
        (
            "admm-filter",
            {"epochs": 1, "stages": 1, "retrain_epochs": 0, "criterion": "l2", "policy": None},
        ),  # fmt: skip
        ("magnitude", {"projection": "global-channels", "norm": "l1", "epochs": 1}),
    ],
)
def test_group_methods_remove_whole_groups_ready_for_surgery(method, options, case2):
    """admm-filter and one-shot magnitude with the 'group' projection leave every channel group
    wholly zero or wholly kept, at the global ratio; a Darknet model then shrinks exactly."""
    model = case2.model()
    result = build_pruner(method, {"ratio": 0.5, **options}).run(model, fit=_fit_for(model, case2))
    names = list(result.masks)
    groups = model_channel_groups(model, names)
    gone = [g for g in groups if not any(bool(result.masks[n][c].any()) for n, c in g)]
    for g in groups:
        kept = [bool(result.masks[n][c].all()) for n, c in g]
        assert all(kept) or not any(kept)  # a group goes whole or not at all
    for g in gone:  # and its filters are exactly zero after the retraining
        assert all(not bool(model.get_parameter(n)[c].any()) for n, c in g)
    total = sum(len(g) for g in groups)
    removed = sum(len(g) for g in gone)
    assert round(0.5 * total) <= removed <= round(0.5 * total) + max(len(g) for g in groups)
    if isinstance(model, Darknet):
        prunable = [g for g in model.channel_map().groups if g.prunable]
        expected = {prunable[i].id for i, g in enumerate(model.channel_groups()) if g in gone}
        assert model.zero_channel_groups() == expected
        model.eval()
        masked = fold_pruned_(model, expected)
        small = shrink(masked, expected).eval()
        x = case2.batch(n=2)[0]
        with torch.no_grad():
            torch.testing.assert_close(small(x), masked(x), atol=1e-4, rtol=1e-4)


# yolo-fastest: a depthwise conv reads a route of two shortcut chains (layer 125, 48 + 96)
@pytest.mark.parametrize("cfg", ["yolov4-tiny.cfg", "yolov4.cfg", "yolo-fastest-1.1-xl.cfg"])
def test_round_to_keeps_multiples_of_8_in_every_pruned_layer(cfg, repo_cfg):
    model = Darknet.from_cfg(repo_cfg / cfg)
    names = select_targets(model, TargetConfig())
    weights = {n: model.get_parameter(n) for n in names}
    groups = model_channel_groups(model, names)
    caps = dict.fromkeys(names, 0.6)
    masks = project_channel_groups(weights, groups, 0.3, caps=caps, norm="l1", round_to=8)
    total = sum(len(g) for g in groups)
    removed = 0
    for n, m in masks.items():
        width = m.shape[0]
        kept = int(m.reshape(width, -1).all(1).sum())
        removed += width - kept
        assert kept == width or kept % 8 == 0, n
        assert width - kept <= int(0.6 * width), n  # the caps still hold
    assert round(0.3 * total) <= removed <= round(0.3 * total) + 8 * 16
    with pytest.raises(PruneError, match=r"round_to=0; expected a positive integer"):
        project_channel_groups(weights, groups, 0.3, round_to=0)


def test_round_to_on_single_filter_groups():
    model = torchvision.models.resnet18(num_classes=10)
    masks = get_projection("global-channels", norm="l2")(
        {n: model.get_parameter(n) for n in ("conv1.weight", "layer1.0.conv1.weight")},
        0.4,
        round_to=8,
    )
    for m in masks.values():
        assert int(m.reshape(m.shape[0], -1).all(1).sum()) % 8 == 0


def test_pruning_a_protected_layer_is_refused_with_the_reason(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg")
    targets = {"include": ["layers.1[35].conv.weight"], "protect": "none"}
    pruner = build_pruner("admm-filter", {"ratio": 0.3, "targets": targets})

    def fit(phase, epochs, hooks):  # pragma: no cover - refused before training
        raise AssertionError("trained a refused request")

    with pytest.raises(PruneError) as info:
        pruner.run(model, fit=fit)
    assert str(info.value) == (
        "layers.15.conv.weight cannot lose channels: it feeds the [yolo] layer 16; leave it out "
        "of the targets (targets.exclude) or prune it unstructured"
    )


def test_unresolvable_channel_groups_name_the_layers():
    """Darknet lets a shortcut add a narrower layer to a wider one; their channels do not pair
    up, so structured pruning of either refuses, naming both layers and their widths."""
    model = Darknet.from_cfg_text(
        "[net]\nwidth=8\nheight=8\nchannels=3\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=1\nactivation=leaky\n"
        "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=1\nactivation=leaky\n"
        "[shortcut]\nfrom=-2\nactivation=linear\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=1\nactivation=leaky\n"
        "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
    )
    names = select_targets(model, TargetConfig())
    with pytest.raises(PruneError) as info:
        build_projection(model, names, "global-channels")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "layers.0.conv.weight cannot lose channels: the channel groups of layer 2 [shortcut] "
        "cannot be resolved: it adds layer 0 (8 channels) to layer 1 (16 channels)"
    )
    assert "(and 1 more targets)" in message  # layer 1 is refused too
    # without the two tied layers the rest prunes
    ok = select_targets(model, TargetConfig(exclude=("layers.[01].*",)))
    masks = build_projection(model, ok, "global-channels")(
        {n: model.get_parameter(n) for n in ok}, 0.5
    )
    assert int((~masks["layers.3.conv.weight"]).reshape(8, -1).all(1).sum()) == 4


def test_bad_admm_filter_options_are_refused():
    # what Z keeps is the method's own: admm-filter has no projection or norm to set (or forbid)
    for option in ("projection", "norm"):
        with pytest.raises(ConfigError, match=rf"admm-filter: unknown option '{option}'"):
            build_config("admm-filter", {"ratio": 0.5, option: "global"})
        with pytest.raises(ConfigError, match=rf"channel: unknown option '{option}'"):
            build_config("channel", {"ratio": 0.5, option: "l1"})
    with pytest.raises(PruneError, match=r"unknown criterion 'l3'"):
        build_config("admm-filter", {"ratio": 0.5, "criterion": "l3"})
    with pytest.raises(PruneError, match=r"round_to=0"):
        build_config("admm-filter", {"ratio": 0.5, "round_to": 0})


@pytest.mark.usefixtures("flush_denormals")
def test_admm_filter_drives_the_batch_norm_scales_of_the_cut_channels_to_zero(repo_cfg):
    """penalize="scale" (the default): ADMM's variables are the batch-norm scales, the pruned
    channels fade out during ADMM (relative residual falls), and the masks cut whole filters."""
    cfg = repo_cfg.parent / "tests" / "prune" / "tiny_detector.cfg"
    torch.manual_seed(0)
    model = Darknet.from_cfg(cfg)
    x = torch.randn(4, *model.input_shape)
    with torch.no_grad():  # the loss: imitate the dense model's heads
        want = [h.detach() for h in copy.deepcopy(model).train()(x)]

    def loss(m, _):
        return sum((h - t).pow(2).mean() for h, t in zip(m(x), want, strict=True))

    seen = {}

    def fit(phase, epochs, hooks):
        if phase == "admm":
            seen["names"] = list(hooks[0].names)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        Trainer(model, opt, loss, hooks=hooks).fit([None] * 10, epochs=epochs)

    pruner = build_pruner("admm-filter", {"ratio": 0.4, "epochs": 12, "stages": 1,
                                          "retrain_epochs": 0, "criterion": "l1",
                                          "policy": None, "cost": "channels",
                                          "update_every": 10})  # fmt: skip
    result = pruner.run(model, fit=fit)
    assert seen["names"] and all(n.endswith(".bn.weight") for n in seen["names"])
    # the cut channels faded out during ADMM: their scales are far below the kept ones'
    # (convergence of the residual itself is measured on real detectors, docs/structured_tuning)
    cut, kept = [], []
    for n, m in result.masks.items():
        gamma = model.get_parameter(n.replace(".conv.weight", ".bn.weight")).detach().abs()
        alive = m.reshape(m.shape[0], -1).all(1)
        cut += gamma[~alive].tolist()
        kept += gamma[alive].tolist()
    assert cut and sum(cut) / len(cut) < 0.5 * sum(kept) / len(kept)
    assert result.history[-1]["relative_residual"] < result.history[0]["relative_residual"]
    for n, m in result.masks.items():
        assert m.shape == model.get_parameter(n).shape
        per_filter = m.reshape(m.shape[0], -1)
        assert bool((per_filter.all(1) | ~per_filter.any(1)).all())  # whole filters
    gone = sum(int((~m.reshape(m.shape[0], -1).all(1)).sum()) for m in result.masks.values())
    assert gone > 0
