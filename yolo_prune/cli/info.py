"""``yolo-prune info CFG``: the layer table Darknet prints, with parameter and BFLOP totals."""

from __future__ import annotations

import argparse
import json

from yolo_prune.darknet import Darknet, build_graph, load_cfg
from yolo_prune.darknet.graph import LayerSpec


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="layer table, parameters and BFLOPs of a Darknet cfg")
    p.add_argument("cfg", help="Darknet .cfg file")
    p.add_argument("--size", type=int, help="input side in pixels (default: the cfg's)")
    p.add_argument("--weights", help="also load these .weights and check that they fit the cfg")
    p.add_argument("--json", action="store_true", help='print {"params": ..., "bflops": ...}')
    p.set_defaults(func=run)


def _describe(layer: LayerSpec) -> tuple[str, str]:
    sec = layer.section
    if layer.kind == "convolutional":
        sy, sx = layer.extra["stride"]
        stride = f"{sy}" if sy == sx else f"{sy}x{sx}"
        groups = f" g{layer.extra['groups']}" if layer.extra["groups"] > 1 else ""
        return str(sec["filters"]), f"{sec['size']}x{sec['size']}/{stride}{groups}"
    if layer.kind == "maxpool":
        return "", f"{layer.extra['size']}x{layer.extra['size']}/{layer.extra['stride'][0]}"
    if layer.kind == "connected":
        return str(sec["output"]), ""
    if layer.kind in ("route", "shortcut", "sam", "scale_channels"):
        return "", ",".join(str(s) for s in layer.sources)
    if layer.kind == "upsample":
        return "", f"x{sec['stride']}"
    return "", ""


def _shape(s: tuple[int, int, int]) -> str:
    return f"{s[2]}x{s[1]}x{s[0]}"


def run(args: argparse.Namespace) -> int:
    sections = load_cfg(args.cfg)
    graph = build_graph(sections, size=args.size)
    summary: dict = {"params": graph.params, "bflops": round(graph.bflops, 6)}
    if args.weights:
        model = Darknet(sections, size=args.size)
        model.load_weights(args.weights)
        nonzero = sum(int((p != 0).sum()) for p in model.parameters())
        summary.update(weights=str(args.weights), header=list(model.header), nonzero_params=nonzero)
    if args.json:
        print(json.dumps(summary))
        return 0
    header = (
        f"{'layer':>5}  {'type':<14} {'filters':>7}  {'size/stride':<12} {'input':>14} -> "
        f"{'output':<14} {'params':>11} {'BFLOPs':>8}"
    )
    print(header)
    print("-" * len(header))
    for layer in graph.layers:
        filters, geometry = _describe(layer)
        print(
            f"{layer.index:>5}  {layer.kind:<14} {filters:>7}  {geometry:<12} "
            f"{_shape(layer.in_shape):>14} -> {_shape(layer.out_shape):<14} "
            f"{layer.params:>11,} {layer.bflops:>8.3f}"
        )
    print("-" * len(header))
    c, h, w = graph.input_shape
    print(f"input {w}x{h}x{c}: {len(graph.layers)} layers, {graph.params:,} parameters, "
          f"{graph.bflops:.3f} BFLOPs")  # fmt: skip
    if args.weights:
        major, minor, revision, seen = summary["header"]
        print(f"weights {args.weights}: version {major}.{minor}.{revision}, seen {seen:,} images, "
              f"{summary['nonzero_params']:,} non-zero parameters; they fit the cfg")  # fmt: skip
    return 0
