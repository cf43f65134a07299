"""Layer semantics that OpenCV's importer does not cover, checked against Darknet's formulas."""

from __future__ import annotations

import pytest
import torch

from yolo_prune.darknet import Darknet

NET = "[net]\nwidth=4\nheight=4\nchannels=2\n"


def _two_inputs(weights_type: str, norm: str) -> Darknet:
    return Darknet.from_cfg_text(
        NET + "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n"
        "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n"
        f"[shortcut]\nfrom=-2\nweights_type={weights_type}\nweights_normalization={norm}\n"
        "activation=linear\n"
    ).eval()


@pytest.mark.parametrize("norm", ["none", "relu", "softmax"])
@pytest.mark.parametrize("weights_type", ["per_feature", "per_channel"])
def test_weighted_shortcut_follows_darknet(weights_type, norm):
    model = _two_inputs(weights_type, norm)
    sc = model.layers[2]
    with torch.no_grad():
        sc.weight.copy_(torch.randn(sc.weight.shape))
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        a = model.layers[0]([x])
        b = model.layers[1]([a])
        out = model(x).view(1, 2, 4, 4)
    w = sc.weight.detach()  # [inputs, per]: row 0 weighs the previous layer, row 1 the from layer
    if norm == "relu":
        w = torch.relu(w) / (1e-4 + torch.relu(w).sum(0))
    elif norm == "softmax":
        e = torch.exp(w - w.max(0).values)
        w = e / (1e-4 + e.sum(0))
    expected = b * w[0].view(1, -1, 1, 1) + a * w[1].view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected)


def test_weighted_shortcut_weights_are_in_the_file(tmp_path):
    model = _two_inputs("per_channel", "relu")
    with torch.no_grad():
        model.layers[2].weight.copy_(torch.arange(4.0).view(2, 2))
    path = tmp_path / "w.weights"
    model.save_weights(path)
    again = _two_inputs("per_channel", "relu")
    again.load_weights(path)
    torch.testing.assert_close(again.layers[2].weight, model.layers[2].weight)


def test_activations_match_darknet_formulas():
    x = torch.linspace(-5, 5, 101)
    from yolo_prune.darknet.layers import build_activation

    expect = {
        "leaky": torch.where(x > 0, x, 0.1 * x),
        "mish": x * torch.tanh(torch.nn.functional.softplus(x)),
        "swish": x * torch.sigmoid(x),
        "logistic": torch.sigmoid(x),
        "relu6": x.clamp(0, 6),
        "hard_mish": torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x))),
        "gelu": 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x**3)),
        "hardtan": x.clamp(-1, 1),
        "linear": x,
    }
    for name, want in expect.items():
        torch.testing.assert_close(build_activation(name)(x), want, atol=1e-5, rtol=1e-5, msg=name)


def test_classifier_softmax_probabilities_in_eval_logits_in_train():
    model = Darknet.from_cfg_text(
        "[net]\nwidth=8\nheight=8\nchannels=1\n[convolutional]\nfilters=4\nsize=3\nactivation=relu\n"
        "[maxpool]\nsize=2\nstride=2\n[dropout]\nprobability=0.5\n[connected]\noutput=10\n"
        "activation=linear\n[softmax]\n"
    )
    x = torch.randn(3, 1, 8, 8)
    model.eval()
    probs = model(x)
    assert probs.shape == (3, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    model.train()
    torch.manual_seed(0)
    logits = model(x)
    assert logits.shape == (3, 10) and not torch.allclose(logits.sum(1), torch.ones(3))


def test_detector_training_output_is_raw_heads(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=160).train()
    heads = model(torch.rand(2, 3, 160, 160))
    assert [tuple(h.shape) for h in heads] == [(2, 3, 5, 5, 85), (2, 3, 10, 10, 85)]
    model.eval()
    with torch.no_grad():
        decoded = model.layers[16].decode(heads[0].detach())
    # centres lie inside their grid cell (sigmoid offsets, stride 32)
    cx = decoded[..., 0]
    col = torch.arange(5).view(1, 1, 1, 5).float()
    assert bool(((cx >= col * 32) & (cx <= (col + 1) * 32)).all())


def test_fuse_keeps_outputs_and_refuses_to_save(repo_cfg, tmp_path, randomize):
    from yolo_prune.errors import WeightsError

    model = randomize(Darknet.from_cfg(repo_cfg / "yolo-fastest-1.1-xl.cfg"))
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        before = model(x)
        after = model.fuse_()(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-3)
    with pytest.raises(WeightsError, match="folded"):
        model.save_weights(tmp_path / "f.weights")


@pytest.mark.parametrize("from_channels", [2, 6])
def test_shortcut_of_unequal_widths_adds_the_common_channels(from_channels):
    """yolov3-tiny-prn, enet and csresnext50 add layers of different widths: Darknet adds
    channel k where both exist and keeps the previous layer's width."""
    model = Darknet.from_cfg_text(
        NET + f"[convolutional]\nfilters={from_channels}\nsize=1\nactivation=linear\n"
        "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n[shortcut]\nfrom=-2\nactivation=linear\n"
    ).eval()
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        a = model.layers[0]([x])
        b = model.layers[1]([a])
        out = model(x).view(1, 4, 4, 4)
    k = min(4, from_channels)
    expected = b.clone()
    expected[:, :k] += a[:, :k]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("side", [12, 13])
@pytest.mark.parametrize(("size", "stride"), [(2, 2), (2, 1), (3, 2), (3, 1), (5, 1)])
def test_maxpool_pads_only_where_a_window_reaches(side, size, stride):
    """Darknet pads ``size - 1`` (-inf), before = half; the pool skips the rows no window
    reads and must still equal the fully padded pool."""
    import torch.nn.functional as F

    cfg = (f"[net]\nwidth={side}\nheight={side}\nchannels=2\n"
           f"[maxpool]\nsize={size}\nstride={stride}\n")  # fmt: skip
    model = Darknet.from_cfg_text(cfg).eval()
    x = torch.randn(1, 2, side, side, generator=torch.Generator().manual_seed(side))
    pad = size - 1
    full = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=float("-inf"))
    expected = F.max_pool2d(full, size, stride)
    out = model(x).view(expected.shape)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.isfinite(out).all()
