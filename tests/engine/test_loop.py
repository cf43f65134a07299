import torch
from torch import nn

from yolo_prune.engine import Hook, LossLogHook, Trainer, cross_entropy_loss, to_device


def _data(n_batches=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))
        for _ in range(n_batches)
    ]


class Recorder(Hook):
    def __init__(self, tag, calls):
        self.tag, self.calls = tag, calls

    def before_train(self, s):
        self.calls.append((self.tag, "before_train", s.epoch, s.step))

    def before_epoch(self, s):
        self.calls.append((self.tag, "before_epoch", s.epoch, s.step))

    def before_step(self, s):
        self.calls.append((self.tag, "before_step", s.epoch, s.step))

    def loss(self, s, loss):
        self.calls.append((self.tag, "loss", s.epoch, s.step))
        return loss

    def after_backward(self, s):
        self.calls.append((self.tag, "after_backward", s.epoch, s.step))

    def after_step(self, s):
        self.calls.append((self.tag, "after_step", s.epoch, s.step))

    def epoch_end(self, s):
        self.calls.append((self.tag, "epoch_end", s.epoch, s.step))

    def after_train(self, s):
        self.calls.append((self.tag, "after_train", s.epoch, s.step))


class Probe(Hook):
    """A hook made of the functions a test passes in (the points left out do nothing)."""

    def __init__(self, **points):
        for name, fn in points.items():
            if not callable(getattr(Hook, name, None)):
                raise TypeError(f"Hook has no point {name!r}")
            setattr(self, name, fn)


def test_hooks_are_called_in_order_at_every_point():
    calls = []
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = Trainer(
        model, opt, cross_entropy_loss, hooks=[Recorder("a", calls), Recorder("b", calls)]
    ).fit(_data(2), epochs=2)
    assert state.step == 4 and state.epoch == 1
    points = [(t, p) for t, p, _, _ in calls]
    step = ["before_step", "loss", "after_backward", "after_step"]
    expected = [("a", "before_train"), ("b", "before_train")]
    for _ in range(2):
        expected += [("a", "before_epoch"), ("b", "before_epoch")]
        for _ in range(2):
            for p in step:
                expected += [("a", p), ("b", p)]
        expected += [("a", "epoch_end"), ("b", "epoch_end")]
    expected += [("a", "after_train"), ("b", "after_train")]
    assert points == expected
    # step counts as seen by after_step: 0, 1 in epoch 0, then 2, 3
    assert [s for t, p, _, s in calls if t == "a" and p == "after_step"] == [0, 1, 2, 3]


def test_loss_hooks_chain_and_reach_the_gradient():
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    grads = []

    def plus_norm(state, loss):
        return loss + 0.5 * state.model.weight.pow(2).sum()

    def record(state):
        grads.append(state.model.weight.grad.clone())

    data = _data(1)
    Trainer(
        model,
        opt,
        lambda m, b: torch.zeros((), requires_grad=True) + 0 * m(b[0]).sum(),
        hooks=[Probe(loss=plus_norm), Probe(loss=plus_norm, after_backward=record)],
    ).fit(data, epochs=1)
    # two hooks each add 1/2 ||W||^2: gradient 2 W
    torch.testing.assert_close(grads[0], torch.full((3, 4), 2.0))


def test_after_step_edits_survive_and_stop_ends_the_run():
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def zero_and_stop(state):
        with torch.no_grad():
            state.model.weight[0].zero_()
        if state.step == 1:
            state.stop = True

    seen = []
    state = Trainer(
        model,
        opt,
        cross_entropy_loss,
        hooks=[Probe(after_step=zero_and_stop, after_train=lambda s: seen.append(s.step))],
    ).fit(_data(5), epochs=3)
    assert state.step == 2 and seen == [2]
    assert torch.count_nonzero(model.weight[0]) == 0


def test_max_steps_per_epoch_cuts_every_epoch_and_the_loss_is_logged():
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    epoch_steps = []
    logger = LossLogHook()
    state = Trainer(
        model,
        opt,
        cross_entropy_loss,
        hooks=[Probe(epoch_end=lambda s: epoch_steps.append(s.epoch_step)), logger],
        max_steps_per_epoch=2,
    ).fit(_data(5), epochs=2)
    assert state.step == 4 and epoch_steps == [2, 2]
    assert state.log["loss"] > 0


def test_training_reduces_the_loss_of_a_torchvision_model():
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3)
    x = torch.rand(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = cross_entropy_loss(model.eval(), (x, y)).item()
    Trainer(model, opt, cross_entropy_loss).fit([(x, y)] * 5, epochs=1)
    after = cross_entropy_loss(model.eval(), (x, y)).item()
    assert after < before


def test_to_device_walks_nested_batches():
    batch = {"a": [torch.ones(1), (torch.zeros(2), "keep")], "b": 3}
    moved = to_device(batch, "cpu")
    assert moved["b"] == 3 and moved["a"][1][1] == "keep"
    assert isinstance(moved["a"], list) and isinstance(moved["a"][1], tuple)
    torch.testing.assert_close(moved["a"][0], torch.ones(1))


def test_grad_clip_applies_to_the_loss_only_not_to_a_hook_penalty():
    # A penalty gradient added in after_backward (ADMM's rho * (W - Z + U)) must reach the
    # optimizer whole: clipped together with the loss gradient, a large rho would be cut back
    # to the clip norm and could not pull the weights.
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    seen = {}

    def add_penalty(s):
        seen["loss_grad_norm"] = float(
            torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        )
        for p in model.parameters():
            p.grad.add_(100.0)

    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = Trainer(
        model, opt, cross_entropy_loss, hooks=[Probe(after_backward=add_penalty)],
        grad_clip=1e-3,
    )  # fmt: skip
    trainer.fit(_data(1), epochs=1)
    assert seen["loss_grad_norm"] <= 1e-3 + 1e-9  # the loss gradient was clipped first
    for b, p in zip(before, model.parameters(), strict=True):
        step = b - p.detach()
        assert torch.all(step > 99.0)  # the penalty's 100 per weight went through unclipped


def test_trainer_tells_hooks_how_many_steps_an_epoch_takes():
    from yolo_prune.engine.distributed import ChunkSampler

    seen = []

    class Look(Hook):
        def before_train(self, state):
            seen.append(state.steps_per_epoch)

    model = nn.Linear(2, 2)
    batches = [(torch.randn(3, 2), torch.tensor([0, 1, 0]))] * 7
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(12, 2), torch.zeros(12, dtype=torch.long))
    sampler = ChunkSampler(12, batch_size=3)
    sampler.set_epoch(0, skip_steps=2)  # a resumed epoch: the loader is short, the epoch not
    loader = torch.utils.data.DataLoader(data, batch_size=3, sampler=sampler)
    assert len(loader) == 2
    for source, options in [
        (batches, {"accumulate": 2}),
        (batches, {"max_steps_per_epoch": 2}),
        (iter(batches), {}),  # no length
        (loader, {}),  # the sampler knows the whole epoch
    ]:
        Trainer(model, opt, cross_entropy_loss, hooks=[Look()], **options).fit(source, epochs=1)
    assert seen == [3, 2, None, 4]
