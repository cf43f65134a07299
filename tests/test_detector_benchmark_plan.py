"""scripts/detector_benchmark.py: which points a choice of parts and methods runs (no training)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "detector_benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("detector_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


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


def test_the_resolution_reference_is_one_point_per_flops_target(bench):
    points = bench.plan("structured,resolution", "0.65,0.45", "0.5", "ours")
    assert [(p[0], p[1], p[3]) for p in points] == [
        ("structured", "flops0.65", "ours"),
        ("structured", "flops0.45", "ours"),
        ("resolution", "flops0.65", bench.REFERENCE),
        ("resolution", "flops0.45", bench.REFERENCE),
    ]
    assert points[2][2] == ("--flops", "0.65")


@pytest.mark.parametrize("fraction, side", [(0.65, 256), (0.45, 192), (0.3, 160), (0.005, None)])
def test_the_smaller_input_is_the_largest_side_within_the_flops_budget(bench, fraction, side):
    # FLOPs grow with the pixels: 256 keeps 0.64 of 320's (within 0.65 + 2%), 224 keeps 0.49
    # (over 0.45 + 2%), and no multiple of 32 is as cheap as 0.005
    asked = []

    def gflops(s: int) -> float:
        asked.append(s)
        return 3.3 * (s / 320) ** 2

    assert bench.smaller_input(fraction, gflops) == side
    assert all(s % 32 == 0 and s <= 320 for s in asked)


@pytest.mark.parametrize("parts, methods, word", [
    ("structure", "ours", "--parts: unknown structure"),
    ("structured", "ours,lamp", "--methods: unknown lamp"),
])  # fmt: skip
def test_unknown_parts_and_methods_are_refused(bench, parts, methods, word):
    with pytest.raises(ValueError, match=word):
        bench.plan(parts, "0.65", "0.5", methods)


def test_each_call_gets_its_share_of_the_cores(bench):
    calls = bench.Calls(threads=1, latency=False)
    assert calls.env["OMP_NUM_THREADS"] == "1"
    assert calls.env["PATH"]  # the rest of the environment is kept


def test_only_a_finished_rival_is_compared_with_ours(bench, tmp_path):
    m = bench.Setup("yolov3-tiny", "cfg/yolov3-tiny.cfg", tmp_path / "w", tmp_path, tmp_path / "r")
    calls = bench.Calls(threads=1)
    point = ("structured", "flops0.65", ("--flops", "0.65"), "l1")
    ours = ("structured", "flops0.65", ("--flops", "0.65"), "ours")
    # ours is never compared with itself; a failed rival, or a rival whose ours has no report
    # (ours failed), has nothing to compare
    assert bench.versus(m, ours, {"AP50": 0.2}, tmp_path, calls) is None
    assert bench.versus(m, point, {"error": "no ratio"}, tmp_path, calls) is None
    assert bench.versus(m, point, {"AP50": 0.2}, tmp_path, calls) is None


@pytest.mark.parametrize("method, error, sets", [
    # structured: the job's --flops refusal; the deep layers' cap goes up until it is reached
    ("ours", "--flops 0.45: no ratio ... reaches it; relax the policy's caps or aim higher",
     ["methods.ours.policy.last_cap=0.6", "methods.ours.policy.last_cap=0.7"]),
    # unstructured: the projection's refusal; the backbone ramp's start goes up
    ("ours-u", "global ratio 0.9 asks ... allow at most 0.868; lower the ratio or raise the caps",
     ["methods.ours-u.policy.first_cap=0.5", "methods.ours-u.policy.first_cap=0.7"]),
])  # fmt: skip
def test_ours_is_rerun_with_the_least_relaxed_cap_that_reaches_its_target(
    bench, monkeypatch, tmp_path, method, error, sets
):
    tried = []

    def fake_prune(point, recipe, cfg, weights, data, name, *extra, calls):
        tried.append(extra[-1])
        return {"AP50": 0.1} if len(tried) == 2 else {"error": error}  # the second step reaches it

    monkeypatch.setattr(bench, "prune", fake_prune)
    calls = bench.Calls(threads=1)
    report = bench.relax_caps({"error": error}, tmp_path, tmp_path / "r", "c", tmp_path / "w",
                              tmp_path, method, ("--ratio", "0.9"), calls)  # fmt: skip
    assert report == {"AP50": 0.1}
    assert tried == sets
    # any other failure is not a cap problem: no rerun
    tried.clear()
    assert bench.relax_caps({"error": "out of memory"}, tmp_path, tmp_path / "r", "c",
                            tmp_path / "w", tmp_path, method, ("--ratio", "0.9"), calls) == {
        "error": "out of memory"}  # fmt: skip
    assert tried == []


def test_a_row_names_only_the_caps_that_differ_from_the_recipe(bench):
    report = {"pruned": {"AP50": 0.1, "gflops": 3.0}, "dense": {"gflops": 3.0},
              "options": {"policy": {"first_cap": 0.5, "last_cap": 1.0, "backbone_end": 106}}}  # fmt: skip
    recipe = {"first_cap": 0.3, "last_cap": 1.0, "backbone_end": 106}
    assert bench.row("ours-u", "r0.9", report, recipe)["relaxed"] == "first_cap 0.5"
    assert bench.row("ours-u", "r0.9", report, report["options"]["policy"])["relaxed"] == ""
    rival = {**report, "options": {}}
    assert bench.row("magnitude", "r0.9", rival, None)["relaxed"] == ""


def test_the_plot_is_drawn_only_from_structured_points(bench, tmp_path):
    unstructured = {"part": "unstructured", "method": "ours-u", "AP50": 0.4, "latency_ms": None}
    bench.plot("yolov3-tiny", [unstructured], tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()  # no empty figure over an earlier run's plot
    structured = {"part": "structured", "method": "ours", "AP50": 0.25, "latency_ms": 9.7,
                  "dense_latency_ms": 13.3, "dense_AP50": 0.42}  # fmt: skip
    bench.plot("yolov3-tiny", [unstructured, structured], tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 0
