import pytest
import torch

from yolo_prune.engine import Trainer
from yolo_prune.errors import PruneError
from yolo_prune.prune.magnitude import (
    DeepCompressionConfig,
    DeepCompressionPruner,
    MagnitudeConfig,
    MagnitudePruner,
    threshold_masks,
)

pytestmark = pytest.mark.usefixtures("flush_denormals")


def _fit_for(model, case, log=None):

    batches = [case.batch(seed=i) for i in range(2)]

    def fit(phase, epochs, hooks):
        if log is not None:
            log.append((phase, epochs))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        Trainer(model, opt, case.loss, hooks=hooks).fit(batches, epochs=epochs)

    return fit


def test_one_shot_magnitude_exact_and_masks_hold(case2):
    model = case2.model()
    result = MagnitudePruner(MagnitudeConfig(ratio=0.8, epochs=1)).run(
        model, fit=_fit_for(model, case2)
    )
    total = sum(m.numel() for m in result.masks.values())
    assert sum(int((~m).sum()) for m in result.masks.values()) == round(0.8 * total)
    params = dict(model.named_parameters())
    for n, m in result.masks.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0


def test_iterative_magnitude_steps_up_the_ratio(classifier):
    model = classifier.model()
    log = []
    cfg = MagnitudeConfig(ratio=0.875, iterations=3, epochs=4)
    result = MagnitudePruner(cfg).run(model, fit=_fit_for(model, classifier, log))
    assert [e for _, e in log] == [1, 1, 2]
    ratios = [h["ratio"] for h in result.history]
    assert ratios == pytest.approx([0.5, 0.75, 0.875])
    sparsities = [h["sparsity"] for h in result.history]
    assert sparsities == sorted(sparsities)
    total = sum(m.numel() for m in result.masks.values())
    assert sum(int((~m).sum()) for m in result.masks.values()) == round(0.875 * total)


def test_threshold_masks_never_empty_a_layer():
    w = {"a": torch.tensor([0.1, -0.2, 0.3]), "b": torch.tensor([1.0, -2.0])}
    masks = threshold_masks(w, {"a": 1.0, "b": 1.5})
    assert masks["a"].tolist() == [False, False, True]  # only the largest survives
    assert masks["b"].tolist() == [False, True]


def test_deep_compression_raises_quality_when_accuracy_holds_and_undoes_when_not(classifier):
    model = classifier.model()
    fit = _fit_for(model, classifier)
    # A stand-in accuracy: good until more than 80% of the targets are pruned.
    from yolo_prune.prune.base import prepare_targets, target_weights
    from yolo_prune.prune.targets import TargetConfig

    names, _ = prepare_targets(model, TargetConfig(), None)

    def evaluate():
        w = target_weights(model, names)
        zeros = sum(int((t == 0).sum()) for t in w.values())
        total = sum(t.numel() for t in w.values())
        return 0.99 if zeros / total <= 0.8 else 0.5

    cfg = DeepCompressionConfig(quality=0.5, step=0.5, rounds=6, epochs_per_round=1, tolerance=0.01)
    result = DeepCompressionPruner(cfg).run(model, fit=fit, evaluate=evaluate)
    kept = [h["kept"] for h in result.history]
    assert kept[0] is True and False in kept
    # after an undone round the step shrinks: the next quality is closer to the last kept one
    i = kept.index(False)
    q_bad, q_next = result.history[i]["quality"], result.history[i + 1]["quality"]
    assert result.history[i - 1]["quality"] < q_next < q_bad
    # the final model is the last kept round's: accuracy within tolerance, masks hold
    assert evaluate() == 0.99
    assert result.sparsity <= 0.8
    params = dict(model.named_parameters())
    for n, m in result.masks.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0


def test_deep_compression_with_a_fixed_threshold_keeps_every_round_at_one_quality(classifier):
    """Han et al.'s schedule: the same quality * std every round, kept whatever the accuracy;
    what retraining moves under the threshold goes in later rounds, so sparsity only grows."""
    model = classifier.model()
    fit = _fit_for(model, classifier)
    cfg = DeepCompressionConfig(quality=0.8, adaptive=False, rounds=3, epochs_per_round=1)
    result = DeepCompressionPruner(cfg).run(model, fit=fit)  # no evaluate needed
    assert [h["quality"] for h in result.history] == [0.8, 0.8, 0.8]
    assert all(h["kept"] for h in result.history)
    spars = [h["sparsity"] for h in result.history]
    assert spars == sorted(spars) and spars[0] > 0.2  # |w| < 0.8 std: a third of a Gaussian
    params = dict(model.named_parameters())
    for n, m in result.masks.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0


def test_deep_compression_needs_evaluate(classifier):
    model = classifier.model()
    with pytest.raises(PruneError, match="needs an evaluate"):
        DeepCompressionPruner(DeepCompressionConfig()).run(model, fit=lambda *a: None)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (MagnitudeConfig, {"ratio": -0.5}, r"outside \[0, 1\)"),
        (MagnitudeConfig, {"ratio": 0.5, "iterations": 0}, "magnitude.iterations=0"),
        (DeepCompressionConfig, {"backoff": 1.5}, "deep-compression.backoff=1.5"),
        (DeepCompressionConfig, {"quality": 0}, "deep-compression.quality=0"),
    ],
)
def test_bad_configs(cls, kwargs, match):
    with pytest.raises(PruneError, match=match):
        cls(**kwargs)
