"""``yolo-prune``: the console script.

Each subcommand lives in its own module under ``yolo_prune.cli`` and exposes
``add_parser(subparsers)`` (which sets ``func`` on its parser) and a ``run(args) -> int``.
Errors derived from :class:`~yolo_prune.errors.YoloPruneError` become one line on stderr and
exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

# Before torch loads: OpenMP threads that spin while waiting make every op 5-30x slower as soon
# as another process holds a core (measured: detect on a video, 1.3 vs 8.3 FPS on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Before cv2 loads: OpenCV and libpng print their own warnings for a damaged image, which would
# add lines of noise to the one-line error that names the file.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from yolo_prune.engine.distributed import distributed_session
from yolo_prune.errors import YoloPruneError

# Subcommand modules, in the order `--help` lists them. A module that is missing (a feature not
# built yet) is simply not offered.
SUBCOMMANDS = ("info", "detect", "eval", "train", "prune", "sweep", "export", "bench", "download")
# Those that train, and so run data parallel under torchrun: the process joins the group once,
# before the command, and leaves it after, however many training phases the command runs.
DISTRIBUTED = frozenset({"train", "prune", "sweep"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolo-prune",
        description="Darknet YOLO in PyTorch: inspect, evaluate, prune, export.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"yolo_prune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"yolo_prune.cli.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    session = (
        distributed_session(args.device)
        if args.command in DISTRIBUTED
        else contextlib.nullcontext()
    )
    try:
        with session:
            return int(args.func(args) or 0)
    except YoloPruneError as exc:
        if args.debug:
            raise
        # One line whatever the message holds (a library's multi-line text quoted in it).
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"yolo-prune {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        print(f"yolo-prune {args.command}: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"yolo-prune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
