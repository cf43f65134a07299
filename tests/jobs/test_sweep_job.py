"""``yolo-prune sweep``: table and plot show the JSON; a killed sweep resumes without redoing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yolo_prune.cli.main import main
from yolo_prune.jobs import sweep as sweep_mod
from yolo_prune.jobs.sweep import sweep_figure

TINY_CFG = Path(__file__).resolve().parents[1] / "prune" / "tiny_detector.cfg"


def _args(tiny_dataset, tiny_weights, tiny_recipe, out):
    return ["sweep", "--cfg", str(TINY_CFG), "--weights", str(tiny_weights), "--data",
            str(tiny_dataset), "--val-split", "train", "--recipe", str(tiny_recipe),
            "--ratios", "0.3,0.6", "--methods", "admm,magnitude", "--no-progress",
            "--no-latency", "--no-deploy", "--out", str(out)]  # fmt: skip


def test_killed_sweep_resumes_and_outputs_agree_with_json(
    tiny_dataset, tiny_weights, tiny_recipe, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "sweep"
    real = sweep_mod.run_prune
    calls = []

    def interrupted_after_two(job):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the third point
        calls.append((job.method, job.recipe["ratio"]))
        return real(job)

    monkeypatch.setattr(sweep_mod, "run_prune", interrupted_after_two)
    assert main(_args(tiny_dataset, tiny_weights, tiny_recipe, out)) == 130
    assert calls == [("admm", 0.3), ("admm", 0.6)]
    partial = json.loads((out / "sweep.json").read_text())
    assert [(p["method"], p["ratio"]) for p in partial["points"]] == calls
    finished = {c: (out / "points" / c[0] / f"r{c[1]:g}" / "report.json").stat().st_mtime_ns
                for c in calls}  # fmt: skip

    calls.clear()
    assert main(_args(tiny_dataset, tiny_weights, tiny_recipe, out)) == 0
    assert calls == [("magnitude", 0.3), ("magnitude", 0.6)]  # finished points not redone
    for (method, ratio), mtime in finished.items():
        report = out / "points" / method / f"r{ratio:g}" / "report.json"
        assert report.stat().st_mtime_ns == mtime

    summary = json.loads((out / "sweep.json").read_text())
    points = summary["points"]
    assert [(p["method"], p["ratio"]) for p in points] == [
        ("admm", 0.3), ("admm", 0.6), ("magnitude", 0.3), ("magnitude", 0.6)
    ]  # fmt: skip
    for p in points:  # each row is its point's report
        report = json.loads((out / "points" / p["method"] / f"r{p['ratio']:g}" /
                             "report.json").read_text())  # fmt: skip
        assert p["AP50"] == report["pruned"]["AP50"]
        assert p["sparsity"] == report["pruned"]["sparsity"]
    # the table shows the JSON
    table = (out / "sweep.md").read_text().splitlines()
    for p in points:
        row = next(r for r in table if r.startswith(f"| {p['method']} | {p['ratio']:g} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) == pytest.approx(100 * p["sparsity"], abs=0.006)
        assert float(cells[3]) == pytest.approx(100 * p["AP"], abs=0.006)
        assert float(cells[4]) == pytest.approx(100 * p["AP50"], abs=0.006)
    # the plot draws the JSON: a line per method through its points, the dense AP50 dashed
    fig = sweep_figure(summary)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"admm", "magnitude", "dense"}
    for method in ("admm", "magnitude"):
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["sparsity"])
        assert list(lines[method].get_xdata()) == pytest.approx([100 * p["sparsity"] for p in mine])
        assert list(lines[method].get_ydata()) == pytest.approx([100 * p["AP50"] for p in mine])
    assert lines["dense"].get_ydata()[0] == pytest.approx(100 * summary["dense"]["AP50"])
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "magnitude at 0.6" in capsys.readouterr().out


@pytest.mark.slow  # 11 s; the killed-sweep test covers reading points back
def test_a_point_whose_recipe_changed_is_run_again(
    tiny_dataset, tiny_weights, tiny_recipe, tmp_path, monkeypatch
):
    out = tmp_path / "sweep"
    args = _args(tiny_dataset, tiny_weights, tiny_recipe, out)
    args[args.index("--ratios") + 1] = "0.5"
    assert main(args) == 0
    real = sweep_mod.run_prune
    calls = []

    def counted(job):
        calls.append(job.method)
        return real(job)

    monkeypatch.setattr(sweep_mod, "run_prune", counted)
    assert main(args) == 0 and calls == []  # nothing changed: nothing redone
    tiny_recipe.write_text(
        tiny_recipe.read_text().replace("{name: magnitude, method: magnitude, epochs: 1}",
                                        "{name: magnitude, method: magnitude, epochs: 2}")
    )  # fmt: skip
    assert main(args) == 0 and calls == ["magnitude"]  # only the changed variant reruns


@pytest.mark.slow  # 22 s; the in-process kill-and-resume test above stays in the default run
def test_sigkilled_sweep_process_resumes_without_redoing(
    tiny_dataset, tiny_weights, tiny_recipe, tmp_path
):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "yolo_prune.cli.main", *_args(tiny_dataset, tiny_weights,
                                                                tiny_recipe, out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "points" / "admm" / "r0.3" / "report.json"
    try:
        deadline = time.monotonic() + 180
        while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert first.exists(), "the first point did not finish"
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup of any kind
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = {p: p.stat().st_mtime_ns for p in (out / "points").rglob("report.json")}
    json.loads(first.read_text())  # complete, not half-written
    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    for path, mtime in done_before.items():  # finished points were read back, not redone
        assert path.stat().st_mtime_ns == mtime, path
    summary = json.loads((out / "sweep.json").read_text())
    assert len(summary["points"]) == 4


def test_sweeps_into_one_folder_add_up(tiny_dataset, tiny_weights, tiny_recipe, tmp_path):
    # two sweeps of other methods into one --out (one after the other here; at the same time
    # the last summary written has every point finished by then): neither drops the other's
    out = tmp_path / "sweep"
    args = _args(tiny_dataset, tiny_weights, tiny_recipe, out)
    args[args.index("--ratios") + 1] = "0.5"
    for method in ("admm", "magnitude"):
        args[args.index("--methods") + 1] = method
        assert main(args) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert [(p["method"], p["ratio"]) for p in summary["points"]] == [
        ("magnitude", 0.5), ("admm", 0.5)
    ]  # fmt: skip
    table = (out / "sweep.md").read_text()
    assert "| admm | 0.5 |" in table and "| magnitude | 0.5 |" in table
