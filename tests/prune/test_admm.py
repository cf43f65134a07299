import pytest
import torch
from torch import nn

from yolo_prune.engine import Trainer
from yolo_prune.errors import PruneError
from yolo_prune.prune.admm import ADMMConfig, ADMMHook, ADMMPruner
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.projections import project_global
from yolo_prune.prune.targets import TargetConfig

pytestmark = pytest.mark.usefixtures("flush_denormals")


class Quadratic(nn.Module):
    """f(W) = 1/2 ||W - A||^2: its optimum under a sparsity constraint is project(A)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.lin = nn.Linear(a.shape[1], a.shape[0], bias=False)
        self.lin2 = nn.Linear(b.shape[1], b.shape[0], bias=False)
        self.a, self.b = a, b

    def loss(self) -> torch.Tensor:
        return 0.5 * (
            (self.lin.weight - self.a).pow(2).sum() + (self.lin2.weight - self.b).pow(2).sum()
        )


def _separated(shape, keep_fraction, generator):
    """Random signs; kept entries |a| in [1, 2], the rest in [0, 0.5] (a clear optimum)."""
    n = int(torch.tensor(shape).prod())
    mags = torch.rand(n, generator=generator) * 0.5
    kept = torch.randperm(n, generator=generator)[: round(keep_fraction * n)]
    mags[kept] = 1 + torch.rand(kept.numel(), generator=generator)
    signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    return (signs * mags).reshape(shape)


def test_admm_on_a_convex_toy_converges_to_the_projected_optimum():
    """min 1/2 ||W - A||^2 s.t. 70% zeros: the optimum is A with its 70% smallest cut."""
    g = torch.Generator().manual_seed(0)
    a, b = _separated((8, 10), 0.3, g), _separated((6, 5), 0.3, g)
    model = Quadratic(a, b)
    with torch.no_grad():
        model.lin.weight.zero_()
        model.lin2.weight.zero_()
    cfg = ADMMConfig(
        ratio=0.7,
        epochs=6,
        stages=2,
        # At a fixed point U = (A - Z) / rho on the cut entries, so the optimum is stable once
        # rho > max|A_cut| / min|A_kept| (0.5 here): the warm-up ends at 10.
        rho=1.0,
        rho_growth=10.0,
        update_every=20,
        retrain_epochs=0,
        targets=TargetConfig(protect="none"),
    )
    names = ["lin.weight", "lin2.weight"]
    hook = ADMMHook(names, cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = [None] * 100  # the loss needs no data
    Trainer(model, opt, lambda m, _: m.loss(), hooks=[hook]).fit(batches, epochs=cfg.epochs)

    target = {"lin.weight": a, "lin2.weight": b}
    optimum = project_global(target, 0.7)
    w = {"lin.weight": model.lin.weight.detach(), "lin2.weight": model.lin2.weight.detach()}
    for n in names:
        # Z holds the projected optimum, and W has converged onto Z.
        torch.testing.assert_close(hook.Z[n], target[n] * optimum[n], atol=1e-4, rtol=0)
        torch.testing.assert_close(w[n], hook.Z[n], atol=1e-3, rtol=0)
    residuals = [h["residual"] for h in hook.history]
    assert residuals[-1] < 1e-3 < residuals[0]


def test_penalty_gradient_matches_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    names = ["0.weight", "1.weight"]
    cfg = ADMMConfig(ratio=0.5, epochs=1, stages=1, rho=0.3)
    hook = ADMMHook(names, cfg)
    params = dict(model.named_parameters())
    weights = {n: params[n] for n in names}
    hook.init_(weights)
    for n in names:
        hook.U[n] = torch.randn_like(hook.U[n])
    hook.penalty(weights).backward()
    autograd = {n: params[n].grad.clone() for n in names}
    for n in names:
        params[n].grad = None
    hook.add_penalty_grad_(weights)
    for n in names:
        torch.testing.assert_close(params[n].grad, autograd[n])


def test_rho_change_rescales_u_and_ratio_steps_up():
    cfg = ADMMConfig(ratio=0.9, epochs=3, stages=3, rho=1e-3, rho_growth=10, ratios=(0.5, 0.8, 0.9))
    names = ["w"]
    hook = ADMMHook(names, cfg)
    hook.init_({"w": torch.randn(100)})
    hook.U["w"] = torch.ones(100)
    assert hook.set_stage_(1)
    assert hook.rho == pytest.approx(1e-2) and hook.ratio == 0.8
    torch.testing.assert_close(hook.U["w"], torch.full((100,), 0.1))
    assert [cfg.stage_of(e) for e in range(3)] == [0, 1, 2]


def test_update_keeps_z_feasible_and_u_is_what_was_cut():
    hook = ADMMHook(["w"], ADMMConfig(ratio=0.6, epochs=1, stages=1))
    w = torch.randn(50)
    hook.init_({"w": w})
    assert int((hook.Z["w"] == 0).sum()) == 30
    u0 = torch.randn(50) * 0.1
    hook.U["w"] = u0.clone()
    hook.update_({"w": w})
    assert int((hook.Z["w"] != 0).sum()) == 20
    torch.testing.assert_close(hook.U["w"], w + u0 - hook.Z["w"])


@pytest.mark.parametrize("projection", ["global", "layer", "layer-filters"])
def test_admm_pruner_end_to_end_exact_sparsity(case2, projection):

    model = case2.model()
    batches = [case2.batch(seed=i) for i in range(2)]
    phases = []

    def fit(phase, epochs, hooks):
        phases.append((phase, epochs))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        Trainer(model, opt, case2.loss, hooks=hooks).fit(batches, epochs=epochs)

    cfg = ADMMConfig(
        ratio=0.5, projection=projection, epochs=2, stages=2, retrain_epochs=1, update_every=0
    )
    result = ADMMPruner(cfg).run(model, fit=fit)
    assert phases == [("admm", 2), ("retrain", 1)]
    params = dict(model.named_parameters())
    total = sum(m.numel() for m in result.masks.values())
    pruned = sum(int((~m).sum()) for m in result.masks.values())
    if projection == "global":
        assert pruned == round(0.5 * total)
    for n, m in result.masks.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0
    # per-layer ||W - Z|| was logged at each Z-step
    assert len(result.history) == 2
    assert set(result.history[0]["layers"]) == set(result.masks)


def test_admm_with_conservative_policy_respects_caps(classifier):

    model = classifier.model()
    batches = [classifier.batch(seed=i) for i in range(2)]

    def fit(phase, epochs, hooks):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        Trainer(model, opt, classifier.loss, hooks=hooks).fit(batches, epochs=epochs)

    policy = ConservativePolicy(first_cap=0.2, last_cap=1.0)
    cfg = ADMMConfig(
        ratio=0.8,
        epochs=1,
        stages=1,
        retrain_epochs=0,
        targets=TargetConfig(protect="none"),
        policy=policy,
    )
    result = ADMMPruner(cfg).run(model, fit=fit)
    caps = result.info["caps"]
    first = result.info["targets"][0]
    assert caps[first] == pytest.approx(0.2)
    m = result.masks[first]
    assert int((~m).sum()) <= int(0.2 * m.numel())
    assert result.sparsity == pytest.approx(
        round(0.8 * sum(x.numel() for x in result.masks.values()))
        / sum(x.numel() for x in result.masks.values())
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.0}, r"ratio=1.0 is outside \[0, 1\)"),
        ({"ratio": 0.5, "projection": "glob"}, "unknown projection 'glob'"),
        ({"ratio": 0.5, "stages": 2, "ratios": (0.9,)}, "has 1 entries but admm.stages=2"),
        ({"ratio": 0.5, "stages": 2, "ratios": (0.3, 0.4)}, "the last stage must reach"),
        ({"ratio": 0.5, "epochs": 2, "stages": 3}, "admm.stages=3 exceeds admm.epochs=2"),
        ({"ratio": 0.5, "rho": -1.0}, "admm.rho=-1.0; expected a positive number"),
    ],
)
def test_bad_admm_configs(kwargs, match):
    with pytest.raises(PruneError, match=match):
        ADMMConfig(**kwargs)


def test_admm_ratio_that_empties_a_layer_fails_before_training():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 50))  # 8 and 200 weights
    calls = []
    cfg = ADMMConfig(ratio=0.95, projection="layer", epochs=1, stages=1)
    with pytest.raises(PruneError, match="ratio 0.95 would remove all 8 weights of 0.weight"):
        ADMMPruner(cfg).run(model, fit=lambda *a: calls.append(a))
    assert calls == []


def test_adaptive_rho_converges_on_the_convex_toy_without_a_schedule():
    """rho=None: rho starts where the penalty pulls as hard as the loss and is balanced at
    each Z-step; W still reaches the projected optimum, with no rho given."""
    g = torch.Generator().manual_seed(0)
    a, b = _separated((8, 10), 0.3, g), _separated((6, 5), 0.3, g)
    model = Quadratic(a, b)
    with torch.no_grad():  # start away from A, so the first gradient is not zero
        model.lin.weight.copy_(0.5 * a + 0.1)
        model.lin2.weight.copy_(0.5 * b - 0.1)
    cfg = ADMMConfig(ratio=0.7, epochs=6, stages=2, update_every=20, retrain_epochs=0)
    names = ["lin.weight", "lin2.weight"]
    hook = ADMMHook(names, cfg)
    assert hook.rho is None
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    Trainer(model, opt, lambda m, _: m.loss(), hooks=[hook]).fit([None] * 100, epochs=cfg.epochs)

    optimum = project_global({"lin.weight": a, "lin2.weight": b}, 0.7)
    w = {"lin.weight": model.lin.weight.detach(), "lin2.weight": model.lin2.weight.detach()}
    for n, target in (("lin.weight", a), ("lin2.weight", b)):
        torch.testing.assert_close(hook.Z[n], target * optimum[n], atol=1e-3, rtol=0)
        torch.testing.assert_close(w[n], hook.Z[n], atol=1e-2, rtol=0)
    assert hook.history[-1]["relative_residual"] < 0.01
    # the gradient-matched start is already above the toy's stability threshold (0.5)
    assert hook.history[0]["rho"] > 0.5


def test_adaptive_rho_under_adam_takes_a_decoupled_proximal_step_and_converges():
    """Under Adam the adaptive penalty takes its own proximal step after each optimizer step
    (the test below checks the step): W still reaches the projected optimum on the convex toy."""
    g = torch.Generator().manual_seed(0)
    a, b = _separated((8, 10), 0.3, g), _separated((6, 5), 0.3, g)
    model = Quadratic(a, b)
    with torch.no_grad():
        model.lin.weight.copy_(0.5 * a + 0.1)
        model.lin2.weight.copy_(0.5 * b - 0.1)
    cfg = ADMMConfig(ratio=0.7, epochs=6, stages=2, update_every=20, retrain_epochs=0)
    names = ["lin.weight", "lin2.weight"]
    hook = ADMMHook(names, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    Trainer(model, opt, lambda m, _: m.loss(), hooks=[hook]).fit([None] * 100, epochs=cfg.epochs)
    optimum = project_global({"lin.weight": a, "lin2.weight": b}, 0.7)
    for n, target, w in (
        ("lin.weight", a, model.lin.weight),
        ("lin2.weight", b, model.lin2.weight),
    ):
        torch.testing.assert_close(hook.Z[n], target * optimum[n], atol=1e-2, rtol=0)
        torch.testing.assert_close(w.detach(), hook.Z[n], atol=2e-2, rtol=0)
    assert hook.history[-1]["relative_residual"] < 0.02
    assert hook.history[-1]["relative_residual"] < hook.history[0]["relative_residual"] / 5


def test_the_decoupled_step_leaves_the_gradient_and_moves_w_by_the_exact_prox():
    from types import SimpleNamespace

    w = torch.nn.Parameter(torch.tensor([3.0, -2.0, 0.5, 0.1]))
    opt = torch.optim.Adam([w], lr=0.1)
    hook = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1))
    state = SimpleNamespace(model=None, optimizer=opt)
    hook._params = {"w": w}
    hook.init_({"w": w})
    hook.U["w"] = torch.tensor([0.0, 0.0, 0.2, -0.1])
    w.grad = torch.tensor([0.0, 0.0, 3.0, 4.0])
    hook.after_backward(state)
    torch.testing.assert_close(w.grad, torch.tensor([0.0, 0.0, 3.0, 4.0]))  # loss's alone
    rho = hook.rho
    assert rho == pytest.approx(5.0 / float(torch.tensor([0.7, 0.0]).norm()))
    before = w.detach().clone()
    hook.config = ADMMConfig(ratio=0.5, epochs=1, stages=1, update_every=0)  # no Z-step here
    hook.after_step(state)
    a = 0.1 * rho
    expected = (before + a * (hook.Z["w"] - hook.U["w"])) / (1 + a)
    torch.testing.assert_close(w.detach(), expected)
    sgd = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1))
    assert not sgd._decoupled(torch.optim.SGD([w], lr=0.1))  # SGD: the penalty in the gradient
    fixed = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1, rho=0.3))
    assert not fixed._decoupled(opt)  # a given rho: ADAM-ADMM, in the gradient


def test_under_sgd_an_adaptive_rho_above_the_stable_bound_takes_the_rest_as_a_prox_step():
    """SGD's momentum follows the penalty's gradient stably only up to ``stable_rho``: that
    much of rho goes into the gradient, the rest takes the exact proximal step."""
    from types import SimpleNamespace

    from yolo_prune.prune.admm import stable_rho

    w = torch.nn.Parameter(torch.tensor([3.0, -2.0, 0.5, 0.1]))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    bound = stable_rho(opt)
    hook = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1, update_every=0))
    state = SimpleNamespace(model=None, optimizer=opt, step=0)
    hook._params = {"w": w}
    hook.init_({"w": w})
    hook.U["w"] = torch.tensor([0.0, 0.0, 0.2, -0.1])
    hook.rho = 3 * bound
    gap = w.detach() - hook.Z["w"] + hook.U["w"]
    w.grad = torch.tensor([0.0, 0.0, 3.0, 4.0])
    hook.after_backward(state)
    torch.testing.assert_close(w.grad, torch.tensor([0.0, 0.0, 3.0, 4.0]) + bound * gap)
    before = w.detach().clone()
    hook.after_step(state)
    a = 0.1 * 2 * bound  # the rest of rho, at the group's lr
    torch.testing.assert_close(w.detach(), (before + a * (hook.Z["w"] - hook.U["w"])) / (1 + a))
    # below the bound all of it is in the gradient and nothing else moves W
    hook.rho = 0.5 * bound
    w.grad = torch.zeros(4)
    hook.after_backward(state)
    torch.testing.assert_close(w.grad, 0.5 * bound * (w.detach() - hook.Z["w"] + hook.U["w"]))
    before = w.detach().clone()
    hook.after_step(state)
    torch.testing.assert_close(w.detach(), before)


def test_adaptive_rho_starts_at_the_gradient_to_gap_ratio_and_follows_the_residual_path():
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0, 0.5, 0.1]))
    hook = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1))
    hook.init_({"w": w})  # Z keeps 3 and -2: W - Z = [0, 0, 0.5, 0.1]
    w.grad = torch.tensor([0.0, 0.0, 3.0, 4.0])  # ||grad|| = 5
    hook.add_penalty_grad_({"w": w})
    assert hook.rho == pytest.approx(5.0 / float(torch.tensor([0.5, 0.1]).norm()))
    rho = hook.rho
    start = hook._start_residual  # ||W0 - Z0|| / ||W0||, where the residual path starts
    assert start == pytest.approx(float(torch.tensor([0.5, 0.1]).norm() / w.detach().norm()))
    hook.U["w"] = torch.ones(4)
    hook.steer_(start, progress=0.5)  # half-way, still at the start: behind the path
    assert hook.rho == pytest.approx(2 * rho)
    torch.testing.assert_close(hook.U["w"], torch.full((4,), 0.5))  # rho * U unchanged
    path = start * (0.02 / start) ** 0.5
    hook.steer_(0.9 * path, progress=0.5)  # on the path: left as it is
    assert hook.rho == pytest.approx(2 * rho)
    hook.steer_(path / 5, progress=0.5)  # far ahead: never lowered
    assert hook.rho == pytest.approx(2 * rho)
    hook.steer_(0.4, progress=0.5)  # behind again: pull harder
    assert hook.rho == pytest.approx(4 * rho)
    fixed = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1, rho=0.3))
    fixed.steer_(0.5, progress=0.5)  # a rho given by the user stays as given
    assert fixed.rho == 0.3


def test_adaptive_rho_far_behind_the_path_jumps_to_the_catch_up_value():
    # Fine-tuning from the teacher alone has next to no gradient at the first step, so rho
    # starts tiny; doubling alone left Yolo-Fastest's residual at 0.43 after 36 steps.
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0, 0.5, 0.1]))
    hook = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1))
    hook.init_({"w": w})
    w.grad = torch.tensor([0.0, 0.0, 3e-3, 4e-3])  # a near-zero gradient: rho starts tiny
    hook.add_penalty_grad_({"w": w})
    first = hook.rho
    start = hook._start_residual
    path = start * (0.02 / start) ** 0.5
    every = hook.config.update_every
    hook.steer_(start, progress=0.5, lr=1e-3)
    catch = ((start / path) ** (1 / every) - 1) / 1e-3
    assert catch > 2 * first and hook.rho == pytest.approx(catch)
    # that rho's penalty step alone, taken `every` times, lands on the path
    assert start / (1 + 1e-3 * hook.rho) ** every == pytest.approx(path)
    w.grad = torch.tensor([0.0, 0.0, 3e-3, 4e-3])
    slow = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1))
    slow.init_({"w": w})
    slow.add_penalty_grad_({"w": w})
    slow.steer_(start, progress=0.5)  # no lr known: doubling only
    assert slow.rho == pytest.approx(2 * slow._start_rho)


def test_catch_up_step_is_the_lr_under_adam_and_the_momentum_step_under_sgd():
    from yolo_prune.engine.hooks import TrainState

    w = torch.nn.Parameter(torch.ones(4))
    other = torch.nn.Parameter(torch.ones(2))
    hook = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1))
    hook._params = {"w": w}
    sgd = torch.optim.SGD([{"params": [w], "lr": 0.01}, {"params": [other], "lr": 1.0}],
                          momentum=0.9)  # fmt: skip
    assert hook._lr(TrainState(model=None, optimizer=sgd)) == pytest.approx(0.1)
    sgd.param_groups[0]["initial_lr"] = 0.02  # a schedule's peak, not its current value
    assert hook._lr(TrainState(model=None, optimizer=sgd)) == pytest.approx(0.2)
    adam = torch.optim.AdamW([w], lr=1e-4)
    assert hook._lr(TrainState(model=None, optimizer=adam)) == pytest.approx(1e-4)


def test_adaptive_rho_stops_growing_at_its_cap_without_an_optimizer_bound():
    # Under Adam (no stability bound) a residual that cannot follow the path used to double
    # rho at every Z-step until float32 overflowed in the penalty's gradient.
    from yolo_prune.prune.admm import RHO_MAX_GROWTH

    w = torch.nn.Parameter(torch.tensor([3.0, -2.0, 0.5, 0.1]))
    hook = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1))
    hook.init_({"w": w})
    w.grad = torch.tensor([0.0, 0.0, 3.0, 4.0])
    hook.add_penalty_grad_({"w": w})
    first = hook.rho
    for _ in range(200):  # always behind the path
        hook.steer_(1.0, progress=1.0)
    assert hook.rho == pytest.approx(first * RHO_MAX_GROWTH)
    restored = ADMMHook(["w"], ADMMConfig(ratio=0.5, epochs=1, stages=1))
    restored.load_state_dict(hook.state_dict())  # a resumed phase keeps the same cap
    restored.steer_(1.0, progress=1.0)
    assert restored.rho == pytest.approx(first * RHO_MAX_GROWTH)
    w.grad.zero_()
    hook.add_penalty_grad_({"w": w})
    assert bool(torch.isfinite(w.grad).all())
