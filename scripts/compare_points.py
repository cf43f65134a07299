#!/usr/bin/env python
"""Paired bootstrap of two pruned detectors on the same validation images.

    .venv/bin/python scripts/compare_points.py --data ../shared/data/coco128 \\
        --a runs/cpu_experiment/sweep/points/admm/r0.5 \\
        --b runs/cpu_experiment/sweep/points/magnitude/r0.5 [--samples 200] [--out cmp.json]

Each of --a/--b is a `yolo-prune prune` output folder (its shrunk cfg+weights where channels
went, else its pruned.sparse, which carries the cfg), a
.sparse/.weights file (then --cfg), or an exported .onnx file (float or INT8, run in ONNX
Runtime). Prints AP50 of both, their difference and its 95% bootstrap interval over images
(yolo_prune.eval.bootstrap).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from yolo_prune.data.coco import load_detection_dataset
from yolo_prune.detect import Detector
from yolo_prune.eval.bootstrap import paired_bootstrap
from yolo_prune.eval.detection import predict_dataset
from yolo_prune.jobs.models import load_model


def predictions(path: Path, cfg: Path | None, data, size: int | None) -> tuple[list, list]:
    weights = path / "pruned.sparse" if path.is_dir() else path
    if path.is_dir() and (path / "pruned-shrunk.cfg").is_file():  # what ships: the shrunk model
        cfg, weights = path / "pruned-shrunk.cfg", path / "pruned-shrunk.weights"
    report = path / "report.json"
    if size is None and report.is_file():  # the input size the run was evaluated at
        size = json.loads(report.read_text())["size"][0]
    model, _ = load_model(cfg, weights, size=size)
    # torch, or ONNX Runtime for an .onnx file (float or INT8)
    detector = Detector(model, letterbox=False, conf=0.005)
    results, ids, _ = predict_dataset(detector, data)
    return results, ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="validation dataset folder")
    p.add_argument("--split", help="split (default: the first val*)")
    p.add_argument("--a", type=Path, required=True)
    p.add_argument("--b", type=Path, required=True)
    p.add_argument("--cfg", type=Path, help="cfg, for plain .weights files")
    p.add_argument("--size", type=int, help="input side (default: the run's, else the cfg's)")
    p.add_argument("--stat", default="AP50")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    a = p.parse_args()
    data = load_detection_dataset(a.data, split=a.split)
    ra, ids = predictions(a.a, a.cfg, data, a.size)
    rb, _ = predictions(a.b, a.cfg, data, a.size)
    out = paired_bootstrap(data.gt, ra, rb, ids, stat=a.stat, samples=a.samples)
    out.update(a=str(a.a), b=str(a.b), a_value=out.pop("a"), b_value=out.pop("b"))
    print(json.dumps(out))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
