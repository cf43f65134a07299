"""scripts/bench_structured.py in its quick mode: it runs, and its figures hang together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 10 s of timing runs
def test_quick_bench_writes_consistent_figures(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_structured.py"), "--quick",
         "--round-to", "8", "--threads", "1", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(out.read_text())
    (result,) = report["results"]
    dense, pruned = result["variants"]
    assert (dense["ratio"], pruned["ratio"]) == (0.0, 0.5)
    assert pruned["params"] < 0.5 * dense["params"]
    assert pruned["flops_speedup"] > 2
    assert pruned["conv_widths_multiple_of_8"] > 0.9  # round_to=8: all but the [yolo] heads
    for rt in ("torch", "onnxruntime", "opencv"):
        assert pruned["objectness_max_abs_diff_vs_torch"].get(rt, 0.0) < 1e-3
        assert pruned["latency_ms"][rt] > 0
