"""The ``torch-pruning`` baseline: Torch-Pruning's own choice of channels, turned into whole-group
masks at our ratio, ready for our surgery; and a one-line error when the package is missing."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from yolo_prune.darknet import Darknet
from yolo_prune.darknet.surgery import fold_pruned_, shrink
from yolo_prune.engine import Trainer
from yolo_prune.errors import PruneError
from yolo_prune.prune.masks import MaskHook
from yolo_prune.prune.registry import build_config, build_pruner
from yolo_prune.prune.structured import model_channel_groups
from yolo_prune.prune.targets import candidate_names
from yolo_prune.prune.tp_baseline import loss_gradients_

MISSING = (
    "method 'torch-pruning' needs the torch-pruning package (a benchmark baseline): "
    "pip install 'yolo_prune[bench]'"
)


@pytest.fixture
def tp():
    return pytest.importorskip("torch_pruning")


HERE = Path(__file__).parent


def _model(cfg: str, repo_cfg: Path) -> Darknet:
    """A test cfg as it is, or a real cfg at 64x64 (the trace's cost barely depends on it)."""
    torch.manual_seed(0)
    if cfg.startswith("tiny_"):
        return Darknet.from_cfg(HERE / cfg)
    return Darknet.from_cfg(repo_cfg / cfg, size=64)


def _tp_choice(tp, model, names, ratio, importance):
    """What Torch-Pruning itself removes from ``model`` (traced, not edited) at ``ratio``."""
    modules = dict(model.named_modules())
    target_of = {modules[n.rsplit(".", 1)[0]]: n for n in names}
    ignored = [modules[n.rsplit(".", 1)[0]] for n in candidate_names(model) if n not in names]
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=torch.randn(1, *model.input_shape),
        importance=importance,
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    removed = set()
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            name = target_of.get(dep.target.module)
            if name is not None and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                removed.update((name, int(i)) for i in idxs)
    return removed


def _removed(masks):
    return {(n, c) for n, m in masks.items() for c in range(m.shape[0]) if not bool(m[c].any())}


@pytest.mark.parametrize(
    "cfg",
    [
        "tiny_detector.cfg",
        "tiny_classifier.cfg",
        pytest.param("yolo-fastest-1.1-xl.cfg", marks=pytest.mark.slow),  # 10 s
        "yolov4-tiny.cfg",
    ],
)
def test_torch_pruning_choice_becomes_whole_groups_at_the_ratio_and_shrinks_exactly(
    cfg, repo_cfg, tp
):
    """The masks remove whole channel groups, the filters Torch-Pruning chose at the converted
    pruning_ratio (all of them, unless it split one of our groups), within one group of the
    ratio; every other parameter is untouched; the shrunk model computes what the masked one
    does. yolov4-tiny's route groups (torch.chunk) are ties Torch-Pruning does not see."""
    model = _model(cfg, repo_cfg)
    dense = copy.deepcopy(model)
    result = build_pruner("torch-pruning", {"ratio": 0.3}).run(model, fit=None)
    info = result.info
    names = info["targets"]
    groups = model_channel_groups(model, names)
    removed = _removed(result.masks)
    for g in groups:
        assert set(g) <= removed or not set(g) & removed  # a group goes whole or not at all
    total = sum(len(g) for g in groups)
    assert info["filters"] == total
    assert info["filters_removed"] == len(removed) > 0
    assert abs(len(removed) - round(0.3 * total)) <= max(len(g) for g in groups)
    assert info["removed_fraction"] == pytest.approx(len(removed) / total)
    chosen = _tp_choice(
        tp,
        copy.deepcopy(dense),
        names,
        info["tp_pruning_ratio"],
        tp.importance.GroupMagnitudeImportance(p=2),
    )
    if cfg == "yolov4-tiny.cfg":  # split groups are kept: only filters it chose go
        assert info["groups_split"] > 0
        assert removed < chosen
    else:
        assert info["groups_split"] == 0
        assert removed == chosen
    for n, p in model.named_parameters():  # protected and non-target layers untouched
        if n not in result.masks:
            assert torch.equal(p, dense.get_parameter(n)), n
        else:
            torch.testing.assert_close(p, dense.get_parameter(n) * result.masks[n])
    assert not set(model.prune_ignore()) & set(result.masks)

    prunable = [g for g in model.channel_map().groups if g.prunable]
    gone = {prunable[i].id for i, g in enumerate(model.channel_groups()) if set(g) <= removed}
    assert model.zero_channel_groups() == gone
    model.eval()
    small = shrink(fold_pruned_(model, gone), gone).eval()
    assert small.graph.params < dense.graph.params
    x = torch.rand(2, *model.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-4, rtol=1e-4)


def test_round_to_keeps_multiples_of_it_in_every_pruned_layer(repo_cfg, tp):
    """Torch-Pruning's own round_to: each layer it cuts keeps a multiple of 8 filters (ONNX
    Runtime's blocked kernels); without it, some layer keeps another count."""
    kept = {}
    for round_to in (1, 8):
        model = _model("yolov3-tiny.cfg", repo_cfg)
        result = build_pruner("torch-pruning", {"ratio": 0.3, "round_to": round_to}).run(
            model, fit=None
        )
        kept[round_to] = [int(m.flatten(1).any(1).sum()) for m in result.masks.values()
                          if not bool(m.all())]  # fmt: skip
    assert kept[8] and all(k % 8 == 0 for k in kept[8])
    assert any(k % 8 for k in kept[1])


def test_the_ratio_counts_filters_not_torch_pruning_channels(detector, tp):
    """A shortcut ties filter pairs: Torch-Pruning counts a pair once, the ratio counts two."""
    result = build_pruner("torch-pruning", {"ratio": 0.5}).run(detector.model(), fit=None)
    info = result.info
    assert (info["tp_channels"], info["filters"]) == (32, 48)
    assert info["filters_removed"] == 24
    assert info["tp_pruning_ratio"] != pytest.approx(0.5, abs=0.01)
    assert result.history[0]["removed_fraction"] == 0.5  # the job's report keeps the history


def test_masked_fine_tuning_keeps_the_removed_filters_zero(detector, tp):
    model = detector.model()
    phases = []

    def fit(phase, epochs, hooks):
        phases.append((phase, epochs, [type(h) for h in hooks]))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        Trainer(model, opt, detector.loss, hooks=hooks).fit([detector.batch(seed=1)], epochs=epochs)

    result = build_pruner("torch-pruning", {"ratio": 0.3, "epochs": 1}).run(model, fit=fit)
    assert phases == [("finetune-1", 1, [MaskHook])]
    for n, c in _removed(result.masks):
        assert not bool(model.get_parameter(n)[c].any())


def _two_backward_passes(case):
    def importance(model, names):
        for seed in range(2):  # the gradients pile up: no zero_grad between the batches
            case.loss(model, case.batch(seed=seed)).backward()
        return {}

    return importance


def test_loss_gradients_are_the_sum_over_the_callbacks_backward_passes(detector):
    model = detector.model()
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for seed in range(2):
        model.zero_grad()
        detector.loss(model, detector.batch(seed=seed)).backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad
    model.zero_grad()
    loss_gradients_(model, ["layers.0.conv.weight"], _two_backward_passes(detector))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], atol=1e-6, rtol=1e-5)
    with pytest.raises(PruneError, match="the importance callback made no backward pass"):
        loss_gradients_(model, [], lambda net, names: {})


def test_taylor_ranks_with_the_gradients_of_the_importance_callback(detector, tp):
    model = detector.model()
    reference = copy.deepcopy(model)  # Torch-Pruning's own recipe: backward, then rank
    _two_backward_passes(detector)(reference, [])
    pruner = build_pruner("torch-pruning", {"ratio": 0.4, "importance": "taylor"})
    result = pruner.run(model, fit=None, importance=_two_backward_passes(detector))
    chosen = _tp_choice(
        tp,
        reference,
        result.info["targets"],
        result.info["tp_pruning_ratio"],
        tp.importance.GroupTaylorImportance(),
    )
    assert _removed(result.masks) == chosen
    # 19.2 of 48 filters asked: Torch-Pruning's choices give 18 or 20, at equal distance the
    # one above goes (as `channel` removes at least the asked count)
    assert result.info["filters_removed"] == 20
    assert all(p.grad is None for p in model.parameters())  # the gradients stayed on the copy
    with pytest.raises(PruneError, match="importance 'taylor' measures on training data"):
        pruner.run(detector.model(), fit=None)


def test_taylor_measures_its_gradients_once_for_a_search_over_ratios(detector, tp):
    # A FLOPs search plans many ratios with a memoised importance callback that makes no
    # backward pass after its first call: the first plan's gradients must serve the rest.
    model = detector.model()
    calls = []

    def once(net, names):
        calls.append(1)
        return _two_backward_passes(detector)(net, names) if len(calls) == 1 else {}

    pruner = build_pruner("torch-pruning", {"ratio": 0.4, "importance": "taylor"})
    searched = [pruner.plan(model, r, importance=once) for r in (0.2, 0.4, 0.3)]
    fresh = build_pruner("torch-pruning", {"ratio": 0.4, "importance": "taylor"})
    expected = fresh.plan(model, 0.4, importance=_two_backward_passes(detector))
    assert _removed(searched[1]) == _removed(expected)
    assert _removed(searched[0]) != _removed(searched[1])
    assert pruner.run(model, fit=None, importance=once).masks.keys() == expected.keys()
    with torch.no_grad():  # other weights: measured again, the callback asked again
        model.get_parameter("layers.0.conv.weight").mul_(0.5)
    with pytest.raises(PruneError, match="made no backward pass"):
        pruner.plan(model, 0.4, importance=once)


def test_missing_package_is_one_line_naming_the_extra(detector, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # `import torch_pruning` fails
    pruner = build_pruner("torch-pruning", {"ratio": 0.3})  # registered without the package
    with pytest.raises(PruneError) as err:
        pruner.run(detector.model(), fit=None)
    assert str(err.value) == MISSING


class _Untraceable(nn.Module):
    """Says an input shape its first layer cannot take."""

    input_shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(self.a(x))


def test_a_model_torch_pruning_cannot_trace_is_a_prune_error(tp):
    with pytest.raises(
        PruneError, match=r"^torch-pruning could not trace the model: RuntimeError: "
    ):
        build_pruner("torch-pruning", {"ratio": 0.3}).run(_Untraceable(), fit=None)
    model = _Untraceable()
    model.input_shape = None
    with pytest.raises(PruneError, match=r"does not say its input shape \(model.input_shape"):
        build_pruner("torch-pruning", {"ratio": 0.3}).run(model, fit=None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": 1.0}, r"torch-pruning.ratio=1.0 is outside \[0, 1\)"),
        (
            {"ratio": 0.3, "importance": "fisher"},
            "torch-pruning.importance='fisher'; choose one of: magnitude, taylor",
        ),
        ({"ratio": 0.3, "epochs": -1}, "torch-pruning.epochs=-1; expected an integer >= 0"),
        ({"ratio": 0.3, "round_to": 0}, "round_to=0; expected a positive integer"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(PruneError, match=message):
        build_config("torch-pruning", options)
