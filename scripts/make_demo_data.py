#!/usr/bin/env python
"""Build the bundled demo data in ``demo/`` from ``../shared/data`` (run once; output committed).

    .venv/bin/python scripts/make_demo_data.py [--shared ../shared/data]

* ``demo/yolo-fastest-1.1-xl.weights``: Yolo-Fastest 1.1 XL trained on COCO (dog-qiuqiu/
  Yolo-Fastest @96a2900d, YOLO licence), copied byte for byte (3.7 MB).
* ``demo/coco/images/{train,val}``, ``demo/coco/labels/{train,val}``: the first 64 coco128
  train2017 images and the first 16 val2017 images (COCO; images under their Flickr licences,
  annotations CC BY 4.0), downscaled to at most 320 px on the long side (JPEG quality 85) so
  the bundle stays small; the YOLO txt labels are normalised, so they are unchanged.
* ``demo/street.mp4``: the first 90 frames (3 s) of ``video/street_360p.mp4`` at 320x180
  (provenance not stated upstream: demo use only).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]


def downscale(src: Path, dst: Path, side: int = 320) -> None:
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, 85])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "demo")
    a = p.parse_args()
    out = a.out
    out.mkdir(exist_ok=True)
    shutil.copyfile(a.shared / "weights" / "yolo-fastest-1.1-xl.weights",
                    out / "yolo-fastest-1.1-xl.weights")  # fmt: skip
    coco = a.shared / "coco128"
    for split, src_split, count in (("train", "train2017", 64), ("val", "val2017", 16)):
        images = sorted((coco / "images" / src_split).glob("*.jpg"))[:count]
        for image in images:
            downscale(image, out / "coco" / "images" / split / image.name)
            label = coco / "labels" / src_split / f"{image.stem}.txt"
            dst = out / "coco" / "labels" / split / label.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(label, dst) if label.is_file() else dst.write_text("")
    cap = cv2.VideoCapture(str(a.shared / "video" / "street_360p.mp4"))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    writer = cv2.VideoWriter(str(out / "street.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                             (320, 180))  # fmt: skip
    for _ in range(90):
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, (320, 180), interpolation=cv2.INTER_AREA))
    writer.release()
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
