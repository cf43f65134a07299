import pytest
from torch import nn

from yolo_prune.errors import PruneError
from yolo_prune.prune.targets import (
    TargetConfig,
    candidate_names,
    select_targets,
    target_depths,
)


def test_default_targets_are_conv_and_linear_weights_in_order(case):
    model = case.model()
    params = dict(model.named_parameters())
    names = candidate_names(model)
    assert names == [n for n in params if n in names]  # registration order
    assert all(n.endswith(".weight") and params[n].dim() in (2, 4) for n in names)
    selected = select_targets(model)
    assert selected == [n for n in names if n in selected]


def test_darknet_detector_keeps_the_conv_before_yolo_dense(case):
    model = case.model()
    selected = select_targets(model)
    ignore = getattr(model, "prune_ignore", None)
    if callable(ignore):
        protected = set(ignore()) & set(candidate_names(model))
    else:  # generic rule: the last target in registration order
        protected = {candidate_names(model)[-1]}
    assert protected and not protected & set(selected)
    assert set(selected) | protected == set(candidate_names(model))
    everything = select_targets(model, TargetConfig(protect="none"))
    assert everything == candidate_names(model)


def test_detector_protects_exactly_the_head(detector):
    selected = select_targets(detector.model())
    assert "layers.6.conv.weight" not in selected
    assert selected[-1] == "layers.4.conv.weight"


def test_generic_rule_protects_the_last_linear_of_a_plain_module():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 8), nn.Linear(8, 2))
    assert select_targets(model) == ["0.weight", "2.weight"]


def test_include_and_exclude_patterns(case):
    model = case.model()
    names = candidate_names(model)
    first = names[0]
    only = select_targets(model, TargetConfig(include=(first,), protect="none"))
    assert only == [first]
    rest = select_targets(model, TargetConfig(exclude=[first], protect="none"))
    assert rest == names[1:]


@pytest.mark.parametrize("field", ["include", "exclude"])
def test_pattern_matching_nothing_is_an_error(case, field):
    with pytest.raises(PruneError, match=rf"targets\.{field} pattern 'nope\.\*' matches no"):
        select_targets(case.model(), TargetConfig(**{field: ("nope.*",)}))


def test_nothing_left_is_an_error(case):
    with pytest.raises(PruneError, match="no parameter left to prune"):
        select_targets(case.model(), TargetConfig(exclude=("*",)))


def test_bad_protect_value():
    with pytest.raises(PruneError, match="targets.protect='all'; choose one of: auto, none"):
        TargetConfig(protect="all")


def test_depth_defaults_to_position_and_uses_prune_depth_when_defined():
    class Net(nn.Sequential):
        def prune_depth(self, name: str) -> int:
            return 10 * int(name.split(".")[0])

    model = Net(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    plain = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    assert target_depths(plain, ["0.weight", "2.weight"]) == {"0.weight": 0, "2.weight": 1}
    assert target_depths(model, ["0.weight", "2.weight"]) == {"0.weight": 0, "2.weight": 20}


def test_a_model_without_weights_is_an_error():
    with pytest.raises(PruneError, match="has no convolution or linear weights"):
        select_targets(nn.ReLU())
