#!/usr/bin/env python
"""What a channel cut of one layer alone costs a detector: AP50 and FLOPs, layer by layer.

    .venv/bin/python scripts/layer_sensitivity.py --cfg cfg/yolov3-tiny.cfg \\
        --weights ../shared/data/weights/yolov3-tiny.weights --data SPLIT --size 320 \\
        [--fraction 0.5] [--calib-images 32] [--blocks] [--out sensitivity.json]

For every convolution whose filters can go (not a ``[yolo]`` head's, not tied across a
shortcut), removes ``--fraction`` of its filters (rounded to a multiple of 8), those whose
output varies least over the first ``--calib-images`` training images of ``--data`` (a constant
output is absorbed exactly by the refit's intercept), shrinks the network, refits the rest to
the dense model on those images (``yolo_prune.darknet.reconstruct``, as ``prune`` does after a
one-shot cut) and scores AP50 on the val split of ``--data``. No fine-tuning. Tune on a split of
the training images, not on the held-out set (``docs/structured_tuning.md``, section 10, makes
one). Prints one line per layer with the CPU; ``--out`` writes the rows as JSON.

``--blocks`` scores depth instead: each removable residual block
(:mod:`yolo_prune.darknet.blocks`) left out alone, no refit, no fine-tuning
(``docs/structured_tuning.md``, section 13).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from yolo_prune.darknet.blocks import drop_blocks, find_residual_blocks
from yolo_prune.darknet.channels import build_channel_map
from yolo_prune.darknet.reconstruct import reconstruct_
from yolo_prune.darknet.surgery import shrink
from yolo_prune.detect.calibrate import calibration_images
from yolo_prune.eval.detection import evaluate_detector, size_figures
from yolo_prune.eval.latency import device_description
from yolo_prune.jobs.models import load_model


def output_variance(model, images: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per conv layer, the variance of each output channel over ``images`` and positions."""
    found: dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda _m, _x, y, i=i: found.__setitem__(i, y.transpose(0, 1).flatten(1).var(1))
        )
        for i, layer in enumerate(model.layers)
        if model.graph.layers[i].kind == "convolutional"
    ]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="train split + val split to score")
    p.add_argument("--size", type=int, default=None, help="input side (default: the cfg's)")
    p.add_argument("--fraction", type=float, default=0.5, help="share of a layer's filters cut")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--blocks", action="store_true", help="leave out each residual block instead")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if not 0.0 < a.fraction < 1.0:
        p.error(f"--fraction {a.fraction}: give a share in (0, 1)")

    dense = load_model(a.cfg, a.weights, size=a.size)[0].eval()
    cmap = build_channel_map(dense.graph)
    calib = calibration_images(dense, a.data, images=a.calib_images)
    variance = output_variance(dense, calib)
    by_layer: dict[int, list[tuple[float, int]]] = {}
    for g in cmap.groups:
        if g.prunable and len(g.producers) == 1:  # one filter of one layer
            layer, channel = g.producers[0]
            by_layer.setdefault(layer, []).append((float(variance[layer][channel]), g.id))

    def ap50(model) -> float:
        return evaluate_detector(model, a.data, latency=False)["AP50"]

    gflops, base = size_figures(dense)["gflops"], ap50(dense)
    print(f"{a.cfg.name}: dense AP50 {100 * base:.2f}, {gflops:.3f} GFLOPs; "
          f"{device_description('cpu')}", flush=True)  # fmt: skip
    rows = []
    for block in find_residual_blocks(dense.graph) if a.blocks else ():
        shallower = drop_blocks(dense, [block])
        saved = gflops - size_figures(shallower)["gflops"]
        score = ap50(shallower.eval())
        rows.append({"block": f"{block.layers[0]}-{block.shortcut}", "gflops_saved": saved,
                     "AP50": score, "vs_dense": score - base})  # fmt: skip
        print(f"block {rows[-1]['block']:>7}: saves {100 * saved / gflops:4.1f}% of the FLOPs, "
              f"AP50 {100 * score:.2f} ({100 * (score - base):+.2f})", flush=True)  # fmt: skip
    for layer, groups in sorted(by_layer.items()) if not a.blocks else ():
        k = round(len(groups) * a.fraction / 8) * 8
        if k == 0 or k >= len(groups):
            continue
        pruned = {gid for _, gid in sorted(groups)[:k]}
        small = shrink(dense, pruned, cmap)
        reconstruct_(small, dense, calib, pruned, cmap)
        saved = gflops - size_figures(small)["gflops"]
        score = ap50(small.eval())
        rows.append({"layer": layer, "filters": len(groups), "removed": k,
                     "gflops_saved": saved, "AP50": score, "vs_dense": score - base})  # fmt: skip
        print(f"layer {layer:3d} ({len(groups):4d} filters, {k} cut): saves "
              f"{100 * saved / gflops:4.1f}% of the FLOPs, AP50 {100 * score:.2f} "
              f"({100 * (score - base):+.2f})", flush=True)  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps({"dense_AP50": base, "gflops": gflops, "rows": rows},
                                    indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
