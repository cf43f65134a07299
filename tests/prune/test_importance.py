"""Fisher channel importance: exact on a model built to know the answer, comparable across
layers, and ranked as such by the ``fisher`` channel criterion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yolo_prune.errors import PruneError
from yolo_prune.prune.importance import fisher_channel_scores
from yolo_prune.prune.registry import build_pruner
from yolo_prune.prune.structured import build_projection, model_channel_groups

SCALES = torch.tensor([0.0, 0.5, 1.0, 3.0])


def _net() -> nn.Sequential:
    """conv1 has four identical filters; conv2 reads channel c with weight SCALES[c] * v."""
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(1, 3, 1, 1, generator=g).expand(4, 3, 1, 1))
        net[0].bias.fill_(0.3)
        v = torch.randn(2, 1, generator=g)
        net[2].weight.copy_((v * SCALES[None, :])[..., None, None])
    return net


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(4, 3, 5, 5, generator=g), torch.randn(4, 2, 5, 5, generator=g))
            for _ in range(n)]  # fmt: skip


def _mse(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def test_scores_follow_the_squared_outgoing_weight_and_leave_the_model_as_it_was():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    scores = fisher_channel_scores(net, ["0.weight"], _batches(), _mse)["0.weight"]
    # identical activations, outgoing weights proportional to SCALES: gate gradients are
    # proportional to SCALES, so the scores to SCALES ** 2
    assert scores[0] == 0
    torch.testing.assert_close(scores / scores[3], (SCALES / 3) ** 2, rtol=1e-4, atol=1e-7)
    assert not net.training and all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_scores_rank_channels_as_removing_them_raises_the_loss():
    """On a fitted random network, Fisher ranks 8 channels as ablating each one does."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with torch.no_grad():
        net[0].weight.mul_(torch.logspace(-1, 0.5, 8)[:, None, None, None])
    x = torch.rand(16, 3, 6, 6)
    y = net(x).detach() + 0.3 * torch.randn(16, 2, 6, 6)
    opt = torch.optim.LBFGS(net[2].parameters(), max_iter=200)  # near a minimum, as trained

    def closure():
        opt.zero_grad()
        value = _mse(net, (x, y))
        value.backward()
        return value

    opt.step(closure)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)]
    scores = fisher_channel_scores(net, ["0.weight"], batches, _mse)["0.weight"]
    with torch.no_grad():
        base = float(_mse(net, (x, y)))
        rises = []
        for c in range(8):
            gate = torch.ones(1, 8, 1, 1)
            gate[0, c] = 0
            rises.append(float((net[2](net[1](net[0](x)) * gate) - y).pow(2).mean()) - base)
    ranks = torch.stack([torch.tensor(rises).argsort().argsort(), scores.argsort().argsort()])
    assert float(torch.corrcoef(ranks.float())[0, 1]) > 0.9  # Spearman


def test_no_batch_is_an_error():
    with pytest.raises(PruneError, match="at least one training batch"):
        fisher_channel_scores(_net(), ["0.weight"], [], _mse)


def _two_layer_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1))


def test_fisher_criterion_ranks_across_layers_without_per_layer_normalisation():
    net = _two_layer_net()
    names = ["0.weight", "1.weight"]
    calls = []

    def importance(model, targets):
        calls.append(list(targets))
        # layer 0 matters 100x less than layer 1, channel by channel
        return {"0.weight": torch.arange(1.0, 9.0), "1.weight": 100 * torch.arange(1.0, 9.0)}

    project = build_projection(
        net, names, "global-channels", criterion="fisher", importance=importance
    )
    weights = {n: net.get_parameter(n) for n in names}
    masks = project(weights, 0.25)  # 4 of 16 channels: the 4 weakest of layer 0
    assert (~masks["0.weight"]).reshape(8, -1).all(1).tolist() == [True] * 4 + [False] * 4
    assert masks["1.weight"].all()
    project(weights, 0.4)
    assert len(calls) == 1  # measured once, at the first projection
    # with weight norms (normalised per layer), both layers lose channels
    l1 = build_projection(net, names, "global-channels", criterion="l1")(weights, 0.5)
    assert not l1["0.weight"].all() and not l1["1.weight"].all()


def test_fisher_criterion_without_data_says_what_to_do():
    net = _two_layer_net()
    with pytest.raises(PruneError, match="training data"):
        build_projection(net, ["0.weight"], "global-channels", criterion="fisher")


def test_channel_method_passes_the_importance_callback_and_trains_only_if_asked():
    net = _two_layer_net()
    fits = []

    def importance(model, targets):
        return {n: torch.arange(1.0, 9.0) for n in targets}

    pruner = build_pruner("channel", {"ratio": 0.5})
    result = pruner.run(net, fit=lambda *a: fits.append(a), importance=importance)
    assert fits == []  # one-shot: epochs default to 0
    groups = model_channel_groups(net, list(result.masks))
    removed = [g for g in groups if not result.masks[g[0][0]][g[0][1]].any()]
    assert sum(len(g) for g in removed) == 8
    assert not net.get_parameter("0.weight")[:4].any()  # weakest channels zeroed
    with pytest.raises(PruneError, match="training data"):
        build_pruner("channel", {"ratio": 0.5}).run(_two_layer_net(), fit=lambda *a: None)


def test_darknet_dropout_is_off_while_measuring_so_scores_repeat():
    from yolo_prune.darknet import Darknet

    cfg = (
        "[net]\nwidth=8\nheight=8\nchannels=3\n"
        "[convolutional]\nbatch_normalize=1\nfilters=6\nsize=3\npad=1\nactivation=leaky\n"
        "[dropout]\nprobability=0.5\n"
        "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
    )
    net = Darknet.from_cfg_text(cfg)
    batches = [(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)), None)]

    def loss(model, batch):
        return model(batch[0]).pow(2).mean()

    first = fisher_channel_scores(net, ["layers.0.conv.weight"], batches, loss)
    again = fisher_channel_scores(net, ["layers.0.conv.weight"], batches, loss)
    assert first["layers.0.conv.weight"].any()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    net.train()
    assert net.layers[1].drop.training  # only frozen while measuring


def test_admm_filter_ranks_by_fisher_when_given_importance():
    calls = []

    def importance(model, targets):
        calls.append(1)
        return {"0.weight": torch.arange(1.0, 9.0), "1.weight": 100 * torch.arange(1.0, 9.0)}

    options = {"ratio": 0.25, "criterion": "fisher", "epochs": 1, "stages": 1, "retrain_epochs": 0,
               "policy": None}  # fmt: skip
    net = _two_layer_net()
    result = build_pruner("admm-filter", options).run(
        net, fit=lambda *a: None, importance=importance
    )
    assert len(calls) == 1
    assert (~result.masks["0.weight"]).reshape(8, -1).all(1).tolist() == [True] * 4 + [False] * 4
    assert result.masks["1.weight"].all()
    with pytest.raises(PruneError, match="training data"):
        build_pruner("admm-filter", options).run(_two_layer_net(), fit=lambda *a: None)
