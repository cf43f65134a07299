#!/usr/bin/env python
"""yolov4 at 608 in ONNX Runtime with each way of writing mish, beside our PyTorch form.

    .venv/bin/python scripts/bench_onnx_mish.py [--size 608] [--rounds 5] [--out FILE.json]

Random weights (latency does not depend on what was learnt). Exports the same model three times
(``yolo_prune.export.onnx.MISH_FORMS``: one Exp, opset 18's Mish node, the exporter's
Softplus+Tanh+Mul) and times them with the torch inference form (compiled mish, the CPU
default) in alternating rounds at batch 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from yolo_prune.darknet import Darknet
from yolo_prune.detect import prepare_for_inference
from yolo_prune.eval.latency import compare_latency, device_description, random_weights_
from yolo_prune.export.onnx import MISH_FORMS, export_onnx_bytes
from yolo_prune.runtime import OnnxRuntimeModel

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", type=Path, default=ROOT / "cfg" / "yolov4.cfg")
    p.add_argument("--size", type=int, default=608)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    model = Darknet.from_cfg(args.cfg, size=args.size)
    random_weights_(model, model.input_shape)
    x = torch.rand((1, *model.input_shape), generator=torch.Generator().manual_seed(0))
    models = {"torch (compiled mish)": prepare_for_inference(model)}
    with torch.inference_mode():
        ref = models["torch (compiled mish)"](x)
    agree = {}
    for form in MISH_FORMS:
        data, _ = export_onnx_bytes(model, input_shape=model.input_shape, opset=18, mish=form)
        name = f"onnxruntime, mish as {form}"
        models[name] = OnnxRuntimeModel(data, name=name)
        agree[name] = float((models[name](x)[..., 4] - ref[..., 4]).abs().max())
    results = compare_latency(models, model.input_shape, rounds=args.rounds, runs=args.runs)
    out = {
        "device": device_description("cpu"),
        "cfg": str(args.cfg.name),
        "size": args.size,
        "latency_ms": {k: r.latency_ms for k, r in results.items()},
        "objectness_max_abs_diff_vs_torch": agree,
    }
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
