"""``yolo-prune bench``: batch-1 latency of several models side by side, in every runtime.

    yolo-prune bench --model dense=cfg/yolov3-tiny.cfg:yolov3-tiny.weights \\
        --model pruned=runs/p/pruned-shrunk.cfg:runs/p/pruned-shrunk.weights --size 320 \\
        [--json times.json]

Each ``--model NAME=CFG:WEIGHTS`` (or ``NAME=FILE`` for a sparse file that carries its cfg or an
``.onnx``) is timed in our PyTorch form, ONNX Runtime and OpenCV, in alternating rounds so that
machine load hits every model alike (:func:`yolo_prune.runtime.time_runtimes`): latencies of one
run compare, latencies of separate runs often do not. The CPU and its vector extensions are
printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from yolo_prune.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="batch-1 latency of several models side by side, in every runtime"
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=CFG:WEIGHTS",
        help="a model to time (repeat); NAME=FILE for a sparse file with its cfg or an .onnx",
    )
    p.add_argument("--size", type=int, help="input side in pixels (default: each cfg's)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(func=run)


def _parse(spec: str) -> tuple[str, Path | None, Path]:
    name, sep, files = spec.partition("=")
    if not sep or not name or not files:
        raise ConfigError(f"--model {spec!r}: expected NAME=CFG:WEIGHTS or NAME=FILE")
    cfg, sep, weights = files.rpartition(":")
    return (name, Path(cfg), Path(weights)) if sep else (name, None, Path(files))


def run(args: argparse.Namespace) -> int:
    from yolo_prune.eval.latency import device_description
    from yolo_prune.jobs.models import load_model
    from yolo_prune.runtime import time_runtimes

    if args.rounds < 1:
        raise ConfigError(f"--rounds {args.rounds}; expected a positive integer")
    models = {}
    for spec in args.model:
        name, cfg, weights = _parse(spec)
        if name in models:
            raise ConfigError(f"--model {spec!r}: the name {name!r} is given twice")
        models[name] = load_model(cfg, weights, size=args.size)[0].eval()
    times = time_runtimes(models, rounds=args.rounds)
    device = device_description("cpu")
    runtimes = sorted({r for row in times.values() for r in row})
    print(f"batch-1 latency, ms (median), side by side in one run; {device}")
    print("| model | " + " | ".join(runtimes) + " |")
    print("|---|" + "---:|" * len(runtimes))
    for name, row in times.items():
        cells = [
            f"{v:.1f}" if isinstance(v, float) else "n/a" for v in (row.get(r) for r in runtimes)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json is not None:
        from yolo_prune.utils.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"device": device, "ms": times}, indent=1) + "\n")
    return 0
