"""Pruning hooks in checkpoints: a hook's state, passed through ``torch.save`` and
``torch.load(weights_only=True)`` into a fresh hook, continues exactly as the first hook would."""

from __future__ import annotations

import io

import pytest
import torch

from yolo_prune.engine import Trainer
from yolo_prune.engine.hooks import Hook
from yolo_prune.errors import PruneError
from yolo_prune.prune.admm import ADMMConfig, ADMMHook
from yolo_prune.prune.masks import MaskHook
from yolo_prune.prune.soft_filter import SoftFilterConfig, SoftFilterHook
from yolo_prune.prune.targets import select_targets

pytestmark = pytest.mark.usefixtures("flush_denormals")

STEPS = 3  # batches per epoch


def _fit(case, model, hooks, *, epochs, start_epoch=0, optimizer_state=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    batches = [case.batch(seed=i) for i in range(STEPS)]
    Trainer(model, opt, case.loss, hooks=hooks).fit(
        batches, epochs=epochs, start_epoch=start_epoch, start_step=start_epoch * STEPS
    )
    return opt


def _through_a_checkpoint(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class _StopAfter(Hook):
    """Ends a run of ``epochs`` after ``cut`` of them, as a kill would: the hooks before it
    saw a run of the full length (ADMM's residual path depends on it)."""

    def __init__(self, cut: int):
        self.cut = cut

    def epoch_end(self, state):
        state.stop = state.epoch + 1 >= self.cut


def _interrupted(case, make_hook, *, epochs, cut):
    """Train ``cut`` of ``epochs`` epochs, checkpoint, and train the rest with a fresh model,
    optimizer and hook given the checkpoint: what a resumed run does."""
    model, hook = case.model(), make_hook()
    opt = _fit(case, model, [hook, _StopAfter(cut)], epochs=epochs)
    saved = _through_a_checkpoint(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "hook": hook.state_dict()}
    )
    model = case.model(seed=1)  # another init: everything must come from the checkpoint
    model.load_state_dict(saved["model"])
    hook = make_hook()
    hook.load_state_dict(saved["hook"])
    _fit(case, model, [hook], epochs=epochs, start_epoch=cut, optimizer_state=saved["optimizer"])
    return model, hook


def _assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("rho", [None, 1e-3])
def test_admm_state_resumes_the_phase_exactly(detector, rho):
    names = select_targets(detector.model())
    # Ratio and rho change at each epoch end and Z/U update every 2 steps, so the resumed
    # hook must know its stage and the epoch its phase began at, not just Z and U; an adaptive
    # rho (None) must come back as it had become.
    config = ADMMConfig(
        ratio=0.5, epochs=3, stages=3, ratios=(0.2, 0.4, 0.5), update_every=2, rho=rho
    )

    def make_hook():
        return ADMMHook(names, config)

    ref_model, ref = detector.model(), make_hook()
    _fit(detector, ref_model, [ref], epochs=3)
    model, hook = _interrupted(detector, make_hook, epochs=3, cut=1)

    _assert_same_weights(model, ref_model)
    for which in ("Z", "U"):
        torch.testing.assert_close(getattr(hook, which), getattr(ref, which), rtol=0, atol=1e-6)
    assert (hook.rho, hook.ratio) == (ref.rho, ref.ratio)
    assert hook.ratio == 0.5 and hook.rho == (config.stage_rho(2) if rho else ref.rho) > 0
    assert len(hook.history) == len(ref.history) == 6  # steps 1, 3, 5, 7 and 2 stage changes
    torch.testing.assert_close(hook.history, ref.history, rtol=0, atol=1e-6)


def test_mask_state_replaces_the_masks_a_hook_was_built_with(detector):
    model = detector.model()
    params = dict(model.named_parameters())
    names = select_targets(model)
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(params[n].shape, generator=gen) > 0.5 for n in names}
    saved = _through_a_checkpoint(MaskHook(masks).state_dict())
    hook = MaskHook({n: torch.ones_like(m) for n, m in masks.items()})
    hook.load_state_dict(saved)
    torch.testing.assert_close(hook.masks, masks, rtol=0, atol=0)

    _fit(detector, model, [hook], epochs=1)
    for n, keep in masks.items():
        assert torch.count_nonzero(params[n].detach()[~keep]) == 0, n
        assert torch.count_nonzero(params[n].detach()[keep]) == int(keep.sum()), n


def test_soft_filter_state_resumes_exactly(detector):
    names = ["layers.0.conv.weight", "layers.2.conv.weight"]
    config = SoftFilterConfig(ratio=0.5, epochs=3, decorrelation=1e-2)

    def make_hook():
        return SoftFilterHook(names, config)

    ref_model, ref = detector.model(), make_hook()
    _fit(detector, ref_model, [ref], epochs=3)
    model, hook = _interrupted(detector, make_hook, epochs=3, cut=1)

    _assert_same_weights(model, ref_model)
    assert hook.history == ref.history
    assert len(hook.history) == 3
    # the epoch after the restart counted the filters that changed against the saved choice
    assert hook.history[1]["filters_changed"] == ref.history[1]["filters_changed"]


@pytest.mark.parametrize("kind", ["admm", "mask", "soft-filter"])
def test_state_of_other_targets_is_refused(detector, kind):
    model = detector.model()
    params = dict(model.named_parameters())
    names = select_targets(model)[:2]

    def make_hook(ns):
        if kind == "admm":
            hook = ADMMHook(ns, ADMMConfig(ratio=0.5, epochs=1, stages=1))
            hook.init_({n: params[n] for n in ns})
            return hook
        if kind == "mask":
            return MaskHook({n: torch.ones_like(params[n], dtype=torch.bool) for n in ns})
        return SoftFilterHook(ns, SoftFilterConfig(ratio=0.5, epochs=1))

    state = make_hook(names).state_dict()
    # Hooks of one class are keyed by their rank among that class: two hooks passed in
    # another order on resume must not swap states silently.
    with pytest.raises(PruneError, match="in another order; resume with the pruning settings"):
        make_hook(names[::-1]).load_state_dict(state)
    with pytest.raises(PruneError, match=f"they differ in {names[1]}"):
        make_hook(names[:1]).load_state_dict(state)
