#!/usr/bin/env python
"""The CPU experiment of the README: real yolov3-tiny, fine-tuned on 128 COCO images, pruned.

    .venv/bin/python scripts/cpu_experiment.py [--out runs/cpu_experiment] [--data DIR]

1. ``yolo-prune train``: the real COCO-trained yolov3-tiny fine-tuned for ``--dense-epochs`` on
   the 128 train images of coco128 (input 320, the settings of cfg/recipes/yolov3-tiny.yaml);
   this is the dense model every method starts from and is compared with.
2. ``yolo-prune sweep``: at global ratios 0.5, 0.7 and 0.9, from that model, each with the same
   10 training epochs after it (cfg/recipes/yolov3-tiny.yaml):
   ``admm`` (ours: global ADMM, conservative backbone), ``admm-plain`` (global ADMM without the
   policy), ``magnitude`` (one-shot global magnitude + fine-tune), ``magnitude-layer``
   (layer-uniform magnitude + fine-tune). AP/AP50 on the 64 val images.

Writes the sweep's table/plot/JSON under ``--out/sweep`` and ``--out/experiment.json`` with the
wall time of each step. Both steps resume when run again (train --resume; finished sweep points
are kept). Nothing here but CLI calls: every figure comes from ``yolo-prune``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "yolo_prune.cli.main", *args]
    print("+ yolo-prune " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "cpu_experiment")
    p.add_argument("--data", type=Path, default=SHARED / "coco128")
    p.add_argument("--weights", type=Path, default=SHARED / "weights" / "yolov3-tiny.weights")
    p.add_argument("--dense-epochs", type=int, default=10)
    p.add_argument("--ratios", default="0.5,0.7,0.9")
    p.add_argument("--methods", default="admm,admm-plain,magnitude,magnitude-layer")
    a = p.parse_args()
    out = a.out.resolve()
    times = {}
    t0 = time.perf_counter()
    dense = out / "dense"
    if not (dense / "final.weights").is_file():
        cli(
            "train", "--cfg", "cfg/yolov3-tiny.cfg", "--weights", str(a.weights),
            "--data", str(a.data), "--val", str(a.data), "--epochs", str(a.dense_epochs),
            "--size", "320", "--batch-size", "8", "--lr", "0.0005", "--warmup-epochs", "0.5",
            "--bn-momentum", "0.03", "--val-every", str(a.dense_epochs), "--resume",
            "--out", str(dense), "--no-progress",
        )  # fmt: skip
    times["dense_minutes"] = (time.perf_counter() - t0) / 60
    t1 = time.perf_counter()
    cli(
        "sweep", "--cfg", "cfg/yolov3-tiny.cfg", "--weights", str(dense / "final.weights"),
        "--data", str(a.data), "--val", str(a.data), "--ratios", a.ratios,
        "--methods", a.methods, "--out", str(out / "sweep"), "--no-progress",
    )  # fmt: skip
    times["sweep_minutes"] = (time.perf_counter() - t1) / 60
    times["total_minutes"] = (time.perf_counter() - t0) / 60
    summary = json.loads((out / "sweep" / "sweep.json").read_text())
    (out / "experiment.json").write_text(json.dumps({**times, **summary}, indent=1) + "\n")
    print(json.dumps(times))


if __name__ == "__main__":
    main()
