"""Acceptance 1, second part, of issue 5: yolov3-tiny from random init overfits 8 images.

    .venv/bin/python scripts/overfit_coco8.py [--out runs/overfit_coco8] [--epochs 300]

Copies the first 8 coco128 train images and labels into ``OUT/data/{images,labels}/train``,
then runs ``yolo-prune train`` on them (Adam, no augmentation, no EMA) with validation on the
same 8 images and batch-norm momentum 0.1 (with Darknet's 0.01 the running statistics lag
the fast-changing weights of a from-scratch run); metrics.json holds AP/AP50 every
``--val-every`` epochs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from yolo_prune.cli.main import main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/overfit_coco8"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--val-every", type=int, default=25)
    p.add_argument("--bn-momentum", default="0.1")
    a = p.parse_args()
    data = a.out / "data"
    for sub in ("images", "labels"):
        (data / sub / "train").mkdir(parents=True, exist_ok=True)
    for image in sorted((DATA / "coco128" / "images" / "train2017").glob("*.jpg"))[:8]:
        shutil.copy(image, data / "images" / "train" / image.name)
        label = DATA / "coco128" / "labels" / "train2017" / f"{image.stem}.txt"
        shutil.copy(label, data / "labels" / "train" / label.name)
    t0 = time.time()
    code = main(["train", "--cfg", str(DATA / "cfg" / "yolov3-tiny.cfg"), "--data", str(data),
                 "--split", "train", "--val", str(data), "--val-split", "train",
                 "--epochs", str(a.epochs), "--out", str(a.out / "run"), "--size", str(a.size),
                 "--batch-size", str(a.batch_size), "--optimizer", "adam", "--lr", str(a.lr),
                 "--weight-decay", "0", "--warmup-epochs", "5", "--no-augment", "--no-ema",
                 "--val-every", str(a.val_every), "--bn-momentum", a.bn_momentum,
                 "--no-progress"])  # fmt: skip
    print(json.dumps({"train_minutes": (time.time() - t0) / 60, "exit": code}))
