"""The compiled one-exponential mish: same values as aten::mish, same detector outputs."""

from __future__ import annotations

import torch
from torch import nn

from yolo_prune.darknet import Darknet
from yolo_prune.detect import fast_mish
from yolo_prune.detect.detector import prepare_for_inference


def test_one_exponential_form_equals_mish_over_the_whole_float_range():
    x = torch.cat([torch.linspace(-120, 120, 200_001), torch.tensor([-1e30, 1e30, 0.0])])
    want = nn.functional.mish(x.double()).float()
    got = fast_mish.mish_one_exp(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)


CFG = (
    "[net]\nwidth=32\nheight=32\nchannels=3\n"
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=mish\n"
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=mish\n"
    "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
)


def test_prepare_for_inference_compiles_mish_and_keeps_the_outputs(randomize):
    model = randomize(Darknet.from_cfg_text(CFG)).eval()
    eager = prepare_for_inference(model, compile_mish=False)
    fast = prepare_for_inference(model)  # default: compiled, for a mish model on the CPU
    assert sum(isinstance(m, fast_mish.CompiledMish) for m in fast.modules()) == 2
    assert not any(isinstance(m, fast_mish.CompiledMish) for m in eager.modules())
    assert not any(isinstance(m, fast_mish.CompiledMish) for m in model.modules())  # a copy
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want, got = eager(x), fast(x)
        got_other_size = fast(torch.rand(1, 3, 32, 32))  # one dynamic-shape compile serves all
    assert not fast_mish._failed, "torch.compile failed here: is a C++ compiler installed?"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_other_size.shape[0] == 1


def test_models_without_mish_are_left_as_they_are(randomize):
    model = randomize(Darknet.from_cfg_text(CFG.replace("activation=mish", "activation=leaky")))
    fast = prepare_for_inference(model)
    assert not any(isinstance(m, fast_mish.CompiledMish) for m in fast.modules())
