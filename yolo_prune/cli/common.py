"""Arguments several subcommands share, declared once so they read the same everywhere."""

from __future__ import annotations

import argparse


def add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    """``--runtime auto|torch|onnxruntime|opencv`` (default auto)."""
    from yolo_prune.runtime import RUNTIMES

    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="where the detector runs: our PyTorch form, ONNX Runtime, OpenCV DNN, or auto "
        "(default): on the CPU, the fastest of them for this model, timed side by side at "
        "start (about 2 s; torch for a single image); an .onnx file runs in onnxruntime",
    )


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bars (logs and CI)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_latency_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-latency``: skip the FPS timing (a few seconds per model)."""
    parser.add_argument("--no-latency", action="store_true", help="skip FPS timing")
