from pathlib import Path

import pytest

from yolo_prune.errors import ConfigError, PruneError
from yolo_prune.prune import registry
from yolo_prune.prune.admm import ADMMConfig, ADMMPruner
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.targets import TargetConfig

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_method_is_an_error():
    with pytest.raises(
        PruneError,
        match="unknown pruning method 'admn'; choose one of: admm, admm-filter, admm-layerwise, "
        "channel, "
        "deep-compression, magnitude, soft-filter, torch-pruning",
    ):
        registry.build_pruner("admn", {"ratio": 0.5})


def test_build_from_plain_options_with_nested_configs():
    pruner = registry.build_pruner(
        "admm",
        {
            "ratio": 0.9,
            "ratios": [0.5, 0.8, 0.9],
            "targets": {"exclude": ["layers.0.*"], "protect": "none"},
            "policy": {"first_cap": 0.5, "backbone_end": 104},
        },
    )
    assert isinstance(pruner, ADMMPruner)
    cfg = pruner.config
    assert cfg.ratios == (0.5, 0.8, 0.9)
    assert cfg.targets == TargetConfig(exclude=("layers.0.*",), protect="none")
    assert cfg.policy == ConservativePolicy(first_cap=0.5, backbone_end=104)


def test_unknown_option_is_an_error():
    with pytest.raises(ConfigError, match="admm: unknown option 'rhoo'; known options: "):
        registry.build_config("admm", {"ratio": 0.5, "rhoo": 1})
    with pytest.raises(ConfigError, match="admm.policy: unknown option 'first'"):
        registry.build_config("admm", {"ratio": 0.5, "policy": {"first": 1}})


def test_config_of_the_wrong_method_is_an_error():
    with pytest.raises(ConfigError, match="magnitude: expected a MagnitudeConfig, got ADMMConfig"):
        registry.build_pruner("magnitude", ADMMConfig(ratio=0.5))


def test_missing_required_option_is_an_error():
    with pytest.raises(ConfigError, match="admm: .*ratio"):
        registry.build_config("admm", {})
