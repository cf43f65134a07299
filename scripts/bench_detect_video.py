#!/usr/bin/env python
"""``yolo-prune detect`` on a video with each runtime forced, and with the default (auto).

    .venv/bin/python scripts/bench_detect_video.py [--weights W] [--cfg C] [--source VIDEO]

Runs the same detection (``--no-save``: decode, pre-process, forward, NMS) once per setting,
in two alternating rounds, and prints the detection FPS of each; the default must be at least
as fast as the fastest forced runtime. Defaults: the bundled Yolo-Fastest and demo clip. Writes
``--out/bench_detect_video.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

# As the console script does before torch loads (yolo_prune/cli/main.py): spinning OpenMP
# threads left by one runtime would slow the next one down.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", type=Path, default=ROOT / "cfg" / "yolo-fastest-1.1-xl.cfg")
    p.add_argument("--weights", type=Path, default=ROOT / "demo" / "yolo-fastest-1.1-xl.weights")
    p.add_argument("--source", type=Path, default=ROOT / "demo" / "street.mp4")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_detect_video")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    from yolo_prune.cli.detect import DetectConfig, run_detect
    from yolo_prune.eval.latency import device_description

    settings = ("torch", "onnxruntime", "opencv", "auto")
    fps: dict[str, list[float]] = {s: [] for s in settings}
    chosen = {}
    for rnd in range(args.rounds):
        for runtime in settings if rnd % 2 == 0 else settings[::-1]:
            config = DetectConfig(cfg=args.cfg, weights=args.weights, source=args.source,
                                  out=args.out / runtime, save=False,
                                  runtime=runtime)  # fmt: skip
            summary, detector = run_detect(config, progress=False)
            fps[runtime].append(summary.detect_fps)
            chosen[runtime] = detector.runtime
            print(f"round {rnd + 1} {runtime:12s} -> {detector.runtime:12s} "
                  f"{summary.detect_fps:6.1f} FPS detection", flush=True)  # fmt: skip
    result = {
        "device": device_description("cpu"),
        "source": str(args.source),
        "weights": str(args.weights),
        "detect_fps_median": {s: statistics.median(v) for s, v in fps.items()},
        "detect_fps": fps,
        "auto_chose": chosen["auto"],
    }
    best_forced = max(result["detect_fps_median"][s] for s in settings[:3])
    result["auto_over_best_forced"] = result["detect_fps_median"]["auto"] / best_forced
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_detect_video.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
