"""Checkpoints: an interrupted run resumed from one equals an uninterrupted run; unsafe or
foreign files are refused."""

from __future__ import annotations

import pickle

import pytest
import torch

from yolo_prune.engine import Hook, Trainer
from yolo_prune.engine.checkpoint import (
    CheckpointHook,
    load_checkpoint,
    restore_checkpoint,
    resume_position,
    save_checkpoint,
)
from yolo_prune.engine.ema import EMAHook, ModelEMA
from yolo_prune.errors import WeightsError

BATCHES = [torch.randn(4, 3, generator=torch.Generator().manual_seed(k)) for k in range(5)]


class Loader(Hook):
    """Yields the epoch's batches from the step a run resumes at."""

    def __init__(self):
        self.skip = 0

    def before_epoch(self, state):
        self.skip = state.epoch_step

    def __iter__(self):
        return iter(BATCHES[self.skip :])


class Killed(Exception):
    pass


class KillAt(Hook):
    def __init__(self, step):
        self.step = step

    def after_step(self, state):
        if state.step == self.step:
            raise Killed


class Counter(Hook):
    """A stateful hook, as a pruning hook is (its state must survive the restart)."""

    def __init__(self):
        self.total = torch.zeros(())

    def after_step(self, state):
        self.total += state.loss

    def state_dict(self):
        return {"total": self.total.clone()}

    def load_state_dict(self, s):
        self.total = s["total"].clone()


def _run(out, *, kill_at=None, resume=False, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader, counter = Loader(), Counter()
    hooks = [loader, counter, EMAHook(ModelEMA(model, tau=2.0))]
    if kill_at is not None:
        hooks.append(KillAt(kill_at))
    hooks.append(CheckpointHook(out, every_steps=1))
    trainer = Trainer(model, opt, lambda m, x: (m(x) ** 2).mean(), hooks=hooks)
    start = (0, 0, 0)
    if resume:
        data = load_checkpoint(out / "last.pt")
        restore_checkpoint(data, model=model, optimizer=opt, hooks=hooks)
        start = resume_position(data)
    trainer.fit(
        loader, epochs=3, start_epoch=start[0], start_step=start[1], start_epoch_step=start[2]
    )
    return model, counter, hooks[2].ema


def test_resume_in_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    ref_model, ref_counter, ref_ema = _run(tmp_path / "ref")
    with pytest.raises(Killed):
        _run(tmp_path / "cut", kill_at=7)  # epoch 1, step 2 of 5
    data = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (data["epoch"], data["epoch_step"], data["step"]) == (1, 2, 7)
    model, counter, ema = _run(tmp_path / "cut", resume=True, seed=123)
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(counter.total, ref_counter.total, rtol=0, atol=1e-6)
    torch.testing.assert_close(ema.module[0].weight, ref_ema.module[0].weight, rtol=0, atol=1e-6)


def test_epoch_end_checkpoint_resumes_at_next_epoch(tmp_path):
    _run(tmp_path)
    data = load_checkpoint(tmp_path / "last.pt")
    assert data["epoch_done"] and resume_position(data) == (3, 15, 0)


def test_missing_hook_state_is_named(tmp_path):
    _run(tmp_path)
    data = load_checkpoint(tmp_path / "last.pt")
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hooks = [Counter(), Counter()]
    with pytest.raises(WeightsError, match="no state for hook.*Counter:1"):
        restore_checkpoint(data, model=model, optimizer=opt, hooks=hooks)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_or_foreign_files_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "yolo_prune.checkpoint/1", "x": Evil()}, evil, pickle_module=pickle)
    with pytest.raises(WeightsError, match="refused to load this checkpoint"):
        load_checkpoint(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(WeightsError, match="not a yolo_prune.checkpoint/1"):
        load_checkpoint(plain)
    with pytest.raises(WeightsError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda m, x: m(x).sum())
    save_checkpoint(tmp_path / "last.pt", trainer.state, epoch_done=False)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
