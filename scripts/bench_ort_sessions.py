#!/usr/bin/env python
"""ONNX files side by side in ONNX Runtime, each in a plain session and in the session our
runtime opens (``yolo_prune.runtime.onnxrt``: QDQ propagation off), batch 1.

    .venv/bin/python scripts/bench_ort_sessions.py --threads 1 --rounds 30 \\
        --model float=v3t.onnx --model int8=v3t-int8.onnx --model stem=v3t-int8-stem.onnx \\
        [--out bench.json]

Rounds alternate over every (file, session) pair, so load changes hit all alike; spinning
threads are off in every session (several spinning pools in one process take each other's
cores). Prints the median milliseconds and the speed-up over the first model's plain session,
with the CPU and its vector extensions; ``--out`` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from yolo_prune.eval.latency import device_description
from yolo_prune.runtime.onnxrt import DISABLED_OPTIMIZERS, session_options


def session(path: Path, threads: int, disabled: list[str]) -> ort.InferenceSession:
    """A session with our runtime's options; ``disabled``: the ORT optimizers it leaves out."""
    return ort.InferenceSession(str(path), session_options(threads),
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="NAME=FILE.onnx (repeat)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    sessions = {}
    for spec in a.model:
        name, _, path = spec.partition("=")
        sessions[f"{name} (plain ORT)"] = session(Path(path), a.threads, [])
        sessions[f"{name} (ours)"] = session(Path(path), a.threads, DISABLED_OPTIMIZERS)
    inp = next(iter(sessions.values())).get_inputs()[0]
    x = np.random.default_rng(0).random([1, *inp.shape[1:]], dtype=np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(a.rounds + 3):  # 3 warm-up rounds
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {inp.name: x})
            if r >= 3:
                times[k].append(1000 * (time.perf_counter() - t))
    ms = {k: float(np.median(v)) for k, v in times.items()}
    base, cpu = next(iter(ms.values())), device_description("cpu").split(",")[0]
    print(f"{cpu}; {a.threads} threads, batch 1, median of {a.rounds} rounds")
    for k, v in ms.items():
        print(f"  {k:36s} {v:8.2f} ms  {base / v:5.2f}x")
    if a.out:
        a.out.write_text(json.dumps({"cpu": cpu, "threads": a.threads, "ms": ms}, indent=1))


if __name__ == "__main__":
    main()
