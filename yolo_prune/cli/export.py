"""``yolo-prune export``: a (pruned) model as Darknet cfg + weights, or as ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from yolo_prune.darknet import Darknet
from yolo_prune.errors import ConfigError
from yolo_prune.export import export_darknet, export_onnx

FORMATS = ("darknet", "onnx")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model as Darknet cfg+weights or ONNX")
    p.add_argument("--cfg", required=True, help="Darknet .cfg")
    p.add_argument("--weights", required=True, help="Darknet .weights")
    p.add_argument("--format", default="onnx", help="darknet or onnx (default onnx)")
    p.add_argument("--size", type=int, help="input side in pixels (default: the cfg's)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: newest supported)")
    p.add_argument(
        "--out", required=True, help="darknet: OUT.cfg + OUT.weights (suffix dropped); onnx: file"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise ConfigError(
            f"unknown export format {args.format!r}; choose one of: {', '.join(FORMATS)}"
        )
    model = Darknet.from_cfg(args.cfg, size=args.size)
    model.load_weights(args.weights)
    out = Path(args.out)
    if args.format == "darknet":
        stem = out.with_suffix("") if out.suffix in (".cfg", ".weights") else out
        cfg, weights = stem.with_suffix(".cfg"), stem.with_suffix(".weights")
        export_darknet(model, cfg, weights)
        print(f"wrote {cfg} and {weights}")
    else:
        opset = export_onnx(model, out, input_shape=model.input_shape, opset=args.opset)
        print(f"wrote {out} (opset {opset}, dynamic batch)")
    return 0
