"""Mixed precision and gradient accumulation in the Trainer."""

from __future__ import annotations

import torch

from yolo_prune.engine import Hook, Trainer


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def _loss(m, batch):
    x, y = batch
    return ((m(x).float() - y) ** 2).mean()


def _batches(n, size):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n * size, size)]


def test_accumulating_two_halves_equals_one_full_batch():
    full, halves = _model(), _model()
    steps = []

    class Count(Hook):
        def after_step(self, state):
            steps.append(state.step)

    opt_f = torch.optim.SGD(full.parameters(), lr=0.1)
    opt_h = torch.optim.SGD(halves.parameters(), lr=0.1)
    Trainer(full, opt_f, _loss).fit(_batches(3, 8), epochs=1)
    state = Trainer(halves, opt_h, _loss, accumulate=2, hooks=[Count()]).fit(
        _batches(7, 4),
        epochs=1,  # the 7th half-batch is left over and dropped
    )
    assert state.step == 3 and steps == [0, 1, 2]
    for a, b in zip(full.parameters(), halves.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_cpu_amp_trains_in_bfloat16_and_keeps_float32_weights():
    model = _model()
    seen = []

    class Dtype(Hook):
        def loss(self, state, loss):
            seen.append(state.model[0](state.batch[0]).dtype)
            return loss

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = _loss(model, _batches(1, 32)[0])
    Trainer(model, opt, _loss, amp=True, hooks=[Dtype()]).fit(_batches(4, 8), epochs=5)
    assert seen[0] == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert _loss(model, _batches(1, 32)[0]) < before
