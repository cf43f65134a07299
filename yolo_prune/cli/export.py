"""``yolo-prune export``: a (pruned) model as Darknet cfg + weights, as ONNX, or as INT8 ONNX."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from yolo_prune.errors import ConfigError
from yolo_prune.export import export_darknet, export_onnx
from yolo_prune.jobs.models import load_model

FORMATS = ("darknet", "onnx")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from yolo_prune.export.quantize import (
        CALIBRATION_METHODS,
        DEFAULT_KEEP_FLOAT,
        DEFAULT_METHOD,
        DEFAULT_PERCENTILE,
        FLOAT_KINDS,
    )

    p = subparsers.add_parser("export", help="export a model as Darknet cfg+weights or ONNX")
    p.add_argument("--cfg", type=Path, help="Darknet .cfg (optional for sparse files with a cfg)")
    p.add_argument("--weights", type=Path, required=True, help=".weights, .pt or sparse file")
    p.add_argument("--format", default="onnx", help="darknet or onnx (default onnx)")
    p.add_argument("--size", type=int, help="input side in pixels (default: the cfg's)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: newest supported)")
    p.add_argument(
        "--out", required=True, help="darknet: OUT.cfg + OUT.weights (suffix dropped); onnx: file"
    )
    q = p.add_argument_group("INT8 (ONNX Runtime static quantization, QDQ)")
    q.add_argument("--int8", action="store_true", help="write an INT8 ONNX model (needs --calib)")
    q.add_argument("--calib", type=Path, help="training dataset folder to calibrate on")
    q.add_argument("--calib-images", type=int, default=64, help="calibration images (default 64)")
    q.add_argument("--calib-split", help="split of --calib (default: the first train* one)")
    q.add_argument(
        "--calib-method",
        default=DEFAULT_METHOD,
        help=f"{', '.join(CALIBRATION_METHODS)} (default {DEFAULT_METHOD})",
    )
    q.add_argument(
        "--calib-percentile",
        type=float,
        help=f"share of each activation histogram kept, percent (percentile only; default "
        f"{DEFAULT_PERCENTILE})",
    )
    q.add_argument(
        "--int8-keep-float",
        help=f"comma-separated kinds of node kept float: {', '.join(FLOAT_KINDS)}, or none "
        f"(default {','.join(DEFAULT_KEEP_FLOAT)})",
    )
    q.add_argument(
        "--int8-heads",
        action="store_true",
        help="quantize the convs before each [yolo] too (faster, less accurate; default float)",
    )
    q.add_argument(
        "--int8-full-range",
        action="store_true",
        help="8-bit weights instead of 7-bit (only for CPUs with VNNI, or ARM: on AVX2 without "
        "VNNI ONNX Runtime's int8 products saturate and AP50 drops)",
    )
    p.set_defaults(func=run)


def _kinds(text: str | None) -> tuple[str, ...]:
    from yolo_prune.export.quantize import DEFAULT_KEEP_FLOAT

    if text is None:
        return DEFAULT_KEEP_FLOAT
    return () if text.strip() == "none" else tuple(k.strip() for k in text.split(",") if k.strip())


def _check(args: argparse.Namespace) -> None:
    """Refuse conflicting options before any file is read."""
    from yolo_prune.export.quantize import (
        calibration_method,
        check_float_kinds,
        check_percentile,
    )

    if args.format not in FORMATS:
        raise ConfigError(
            f"unknown export format {args.format!r}; choose one of: {', '.join(FORMATS)}"
        )
    if args.int8:
        if args.format != "onnx":
            raise ConfigError("--int8 writes ONNX; drop --format darknet (or drop --int8)")
        if args.calib is None:
            raise ConfigError(
                "--int8 needs calibration images: add --calib DATA (a training dataset folder)"
            )
        calibration_method(args.calib_method)
        check_float_kinds(_kinds(args.int8_keep_float))
        if args.calib_percentile is not None and args.calib_method != "percentile":
            raise ConfigError(
                f"--calib-percentile applies to --calib-method percentile, not "
                f"{args.calib_method}; drop it or add --calib-method percentile"
            )
        check_percentile(args.calib_method, args.calib_percentile)
        if args.calib_images < 1:
            raise ConfigError(f"--calib-images {args.calib_images}; expected a positive number")
    else:
        given = [
            flag
            for flag, value in (
                ("--calib", args.calib),
                ("--calib-percentile", args.calib_percentile),
                ("--int8-keep-float", args.int8_keep_float),
                ("--int8-heads", args.int8_heads or None),
                ("--int8-full-range", args.int8_full_range or None),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(f"{' and '.join(given)} only apply with --int8; add --int8")


def run(args: argparse.Namespace) -> int:
    _check(args)
    model, _ = load_model(args.cfg, args.weights, size=args.size)
    out = Path(args.out)
    if args.format == "darknet":
        stem = out.with_suffix("") if out.suffix in (".cfg", ".weights") else out
        cfg, weights = stem.with_suffix(".cfg"), stem.with_suffix(".weights")
        export_darknet(model, cfg, weights)
        print(f"wrote {cfg} and {weights}")
        return 0
    if not args.int8:
        opset = export_onnx(model, out, input_shape=model.input_shape, opset=args.opset)
        print(f"wrote {out} (opset {opset}, dynamic batch)")
        return 0

    from yolo_prune.export.quantize import calibration_batches, quantize_onnx_int8

    batches = calibration_batches(
        model, args.calib, images=args.calib_images, split=args.calib_split
    )
    with tempfile.TemporaryDirectory(prefix="yolo_prune_export_") as tmp:
        float_path = Path(tmp) / "float.onnx"
        opset = export_onnx(model, float_path, input_shape=model.input_shape, opset=args.opset)
        summary = quantize_onnx_int8(
            float_path,
            out,
            calibration=batches,
            keep_float_heads=not args.int8_heads,
            keep_float=_kinds(args.int8_keep_float),
            method=args.calib_method,
            percentile=args.calib_percentile,
            reduce_range=not args.int8_full_range,
        )
    percentile = summary["percentile"]
    print(
        f"wrote {out} (INT8 QDQ, opset {opset}, {summary['quantized_convs']} convs int8, "
        f"{'8' if args.int8_full_range else '7'}-bit weights, "
        f"{'int8' if args.int8_heads else 'float'} heads, "
        f"{','.join(summary['keep_float']) or 'no other'} nodes float, {args.calib_method}"
        f"{'' if percentile is None else f' {percentile}'} calibration on "
        f"{summary['calibration_images']} images of {args.calib})"
    )
    return 0
