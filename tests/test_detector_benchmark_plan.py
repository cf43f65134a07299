"""scripts/detector_benchmark.py: which points a choice of parts and methods runs (no training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "detector_benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("detector_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unstructured_alone_runs_no_structured_point(bench):
    # "structured" is a substring of "unstructured": the parts are whole names.
    points = bench.plan("unstructured", "0.65,0.45", "0.5,0.7", "ours,l1,ours-u,magnitude")
    assert [(p[0], p[1], p[3]) for p in points] == [
        ("unstructured", "r0.5", "ours-u"),
        ("unstructured", "r0.5", "magnitude"),
        ("unstructured", "r0.7", "ours-u"),
        ("unstructured", "r0.7", "magnitude"),
    ]
    assert points[0][2] == ("--ratio", "0.5")


def test_ours_runs_before_its_rivals_at_every_target(bench):
    # a rival's comparison reads ours' report of the same target, so ours must come first
    points = bench.plan("structured", "0.65", "0.5", "bn,ours,l1")
    assert [p[3] for p in points] == ["ours", "l1", "bn"]
    assert points[0][2] == ("--flops", "0.65")


@pytest.mark.parametrize("parts, methods, word", [
    ("structure", "ours", "--parts: unknown structure"),
    ("structured", "ours,lamp", "--methods: unknown lamp"),
])  # fmt: skip
def test_unknown_parts_and_methods_are_refused(bench, parts, methods, word):
    with pytest.raises(ValueError, match=word):
        bench.plan(parts, "0.65", "0.5", methods)
