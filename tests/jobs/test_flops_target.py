"""--flops: the ratio is searched so the shrunk model keeps the asked fraction of the FLOPs."""

from __future__ import annotations

import pytest

from yolo_prune.darknet import Darknet
from yolo_prune.errors import ConfigError
from yolo_prune.jobs.prune import ratio_for_flops, shrunk_gflops
from yolo_prune.prune.registry import build_pruner


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("channel", {"criterion": "l1"}),
        ("admm-filter", {"criterion": "l1", "policy": {"first_cap": 0.2, "last_cap": 0.5}}),
    ],
)
def test_ratio_for_flops_lands_within_the_tolerance(repo_cfg, method, options):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=320)
    pruner = build_pruner(method, {"ratio": 0.3, **options})
    ratio, fraction = ratio_for_flops(pruner, model, 0.65, importance=None)
    assert fraction == pytest.approx(0.65, abs=0.005)
    # the planned cut at that ratio is what the report will count
    dense = shrunk_gflops(model, {})
    masks = pruner.plan(model, ratio)
    assert shrunk_gflops(model, masks) / dense == pytest.approx(fraction)
    assert not any(bool((~m).any()) for m in pruner.plan(model, 0.0).values())


def test_flops_target_refused_for_unstructured_methods_and_bad_values(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=320)
    with pytest.raises(ConfigError, match="--flops needs a structured method"):
        ratio_for_flops(object(), model, 0.65, importance=None)
    pruner = build_pruner("channel", {"ratio": 0.3, "criterion": "l1"})
    with pytest.raises(ConfigError, match=r"--flops 1.5; expected a fraction"):
        ratio_for_flops(pruner, model, 1.5, importance=None)
    capped = build_pruner("channel", {"ratio": 0.3, "criterion": "l1",
                                      "policy": {"first_cap": 0.0, "last_cap": 0.05}})  # fmt: skip
    with pytest.raises(ConfigError, match="no ratio of this method reaches it within 2%"):
        ratio_for_flops(capped, model, 0.3, importance=None)
