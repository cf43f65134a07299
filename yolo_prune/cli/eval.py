"""``yolo-prune eval``: accuracy and size figures of a (pruned) Darknet model on a dataset.

    yolo-prune eval --cfg cfg/lenet5.cfg --weights W --data ../shared/data/mnist [--out m.json]

    yolo-prune eval --cfg cfg/yolov3-tiny.cfg --weights W --data ../shared/data/coco128

``--weights`` may be a Darknet ``.weights`` file, a PyTorch state dict (``.pt``/``.pth``), or a
sparse file written by :func:`yolo_prune.prune.sparse.save_sparse` (which may carry its cfg, so
``--cfg`` is then optional). The dataset kind is recognised from the folder's contents; each kind
is one entry of ``DATASETS``: MNIST and CIFAR-10 report top-1 accuracy, a detection dataset
(COCO JSON or YOLO txt layout) reports COCO AP/AP50/AP75, GFLOPs and FPS.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolo_prune.cli.common import add_latency_argument, add_progress_argument, add_runtime_argument
from yolo_prune.errors import ConfigError, DataError
from yolo_prune.jobs import models
from yolo_prune.utils.io import atomic_write_text


@dataclass(frozen=True)
class EvalOptions:
    """What ``yolo-prune eval`` was asked to do."""

    cfg: Path | None  # Darknet cfg (optional when the sparse weights carry one)
    weights: Path  # .weights, .pt state dict, or sparse file
    data: Path  # dataset folder
    split: str | None = None  # which split (None: classifiers "test", detection the first val*)
    batch_size: int | None = None  # images per forward pass (None: 500 classify, 8 detect)
    device: str = "cpu"  # torch device
    out: Path | None = None  # write the metrics as JSON here
    size: int | None = None  # detection: network input side (None: the cfg's)
    conf: float = 0.005  # detection: score threshold (low for mAP, as Darknet's `map`)
    nms: float = 0.45  # detection: IoU threshold of the class-aware NMS
    letterbox: bool | None = None  # detection: keep aspect ratios (None: the cfg's letter_box)
    save_detections: Path | None = None  # detection: also write COCO results JSON here
    runtime: str = "auto"  # detection: torch, onnxruntime, opencv, or auto (the fastest here)
    progress: bool = True  # progress bars
    latency: bool = True  # detection: also time batch 1 and --batch-size forward passes


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="accuracy, parameters and sparsity of a model on a dataset",
        description=(
            "Evaluate a Darknet model. Classifier datasets (an MNIST folder with the idx .gz "
            "files, a CIFAR-10 folder with the JPEG tarballs) report top-1 accuracy; every run "
            "reports parameters total / non-zero and the sparsity of the conv+fc weights. A "
            "detection dataset (COCO JSON + images, or images/<split> + labels/<split> YOLO txt) "
            "reports COCO AP, AP50, AP75, GFLOPs, latency and FPS."
        ),
    )
    p.add_argument("--cfg", type=Path, help="Darknet .cfg (optional for sparse files with a cfg)")
    p.add_argument(
        "--weights", type=Path, required=True, help=".weights, .pt, .sparse or .onnx file"
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--split", help="dataset split (default: test; detection: the first val*)")
    p.add_argument("--batch-size", type=int, help="images per batch (default 500; detection 8)")
    p.add_argument("--size", type=int, help="detection: input side in pixels (default: the cfg's)")
    p.add_argument("--conf", type=float, default=0.005, help="detection: score threshold")
    p.add_argument("--nms", type=float, default=0.45, help="detection: NMS IoU threshold")
    p.add_argument("--letterbox", action="store_true", default=None, help="detection: letterbox")
    p.add_argument("--save-detections", type=Path, help="detection: write COCO results JSON")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_progress_argument(p)
    add_runtime_argument(p)
    add_latency_argument(p)
    p.add_argument("--out", type=Path, help="write the metrics as JSON to this file")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}; expected a positive integer")
    return EvalOptions(
        cfg=args.cfg,
        weights=args.weights,
        data=args.data,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
        size=args.size,
        conf=args.conf,
        nms=args.nms,
        letterbox=args.letterbox,
        save_detections=args.save_detections,
        runtime=args.runtime,
        progress=not args.no_progress,
        latency=not args.no_latency,
    )


# --- model ----------------------------------------------------------------------------------

load_model = models.load_model  # the CLI's name for it; detect and prune use it too


def size_metrics(model: nn.Module) -> dict[str, Any]:
    """Parameter counts and the sparsity of the conv+fc weights."""
    from yolo_prune.eval.profile import param_stats, weight_names

    own = getattr(model, "size_figures", None)  # a model in another runtime counts its own
    if callable(own):
        f = own()
        return {
            "params_total": f["params"],
            "params_nonzero": f["nonzero_params"],
            "params_sparsity": f["params_sparsity"],
            "weights_total": f["weights"],
            "weights_nonzero": f["nonzero_weights"],
            "sparsity": f["sparsity"],
            "compression": f["weights"] / max(f["nonzero_weights"], 1),
        }

    params = param_stats(model)
    weights = param_stats(model, weight_names(model))
    return {
        "params_total": params.total,
        "params_nonzero": params.nonzero,
        "params_sparsity": params.sparsity,
        "weights_total": weights.total,
        "weights_nonzero": weights.nonzero,
        "sparsity": weights.sparsity,
        "compression": weights.compression,
    }


# --- datasets -------------------------------------------------------------------------------


def _classifier(load: Callable[..., tuple[torch.Tensor, torch.Tensor]], name: str):
    def evaluate(model: nn.Module, opts: EvalOptions) -> dict[str, Any]:
        from yolo_prune.eval.accuracy import evaluate_accuracy, tensor_batches

        split = opts.split or "test"
        if split not in ("train", "test"):
            raise ConfigError(f"--split {split!r}; {name} has train and test")
        images, labels = load(opts.data, split=split)
        expected = tuple(getattr(model, "input_shape", ()))
        if expected and tuple(images.shape[1:]) != expected:
            raise DataError(
                f"{name} images are {tuple(images.shape[1:])} (C, H, W) but the cfg expects "
                f"{expected}; use a cfg built for {name}",
                path=opts.data,
            )
        model.to(opts.device)
        batches = tensor_batches(images, labels, batch_size=opts.batch_size or 500)
        acc = evaluate_accuracy(model, batches, device=opts.device)
        return {"task": "classify", "split": split, "top1": acc.value, "correct": acc.correct,
                "total": acc.total}  # fmt: skip

    return evaluate


def _mnist(model: nn.Module, opts: EvalOptions) -> dict[str, Any]:
    from yolo_prune.data.mnist import mnist_tensors

    return _classifier(mnist_tensors, "MNIST")(model, opts)


def _cifar10(model: nn.Module, opts: EvalOptions) -> dict[str, Any]:
    from yolo_prune.data.cifar10 import cifar10_tensors

    return _classifier(cifar10_tensors, "CIFAR-10")(model, opts)


def _is_mnist(root: Path) -> bool:
    from yolo_prune.data.mnist import is_mnist_dir

    return is_mnist_dir(root)


def _is_cifar10(root: Path) -> bool:
    from yolo_prune.data.cifar10 import is_cifar10_dir

    return is_cifar10_dir(root)


def _is_detection(root: Path) -> bool:
    from yolo_prune.data.coco import is_detection_dir

    return is_detection_dir(root)


def _detection(model: nn.Module, opts: EvalOptions) -> dict[str, Any]:
    from yolo_prune.data.coco import choose_split
    from yolo_prune.eval.detection import evaluate_detector

    if not getattr(model, "is_detector", True):
        raise ConfigError("this cfg has no [yolo] layer, but --data is a detection dataset")
    split = choose_split(opts.data, opts.split)
    metrics = evaluate_detector(
        model,
        opts.data,
        split=split,
        size=opts.size,
        letterbox=opts.letterbox,
        conf=opts.conf,
        nms=opts.nms,
        batch_size=opts.batch_size or 8,
        device=opts.device,
        runtime=opts.runtime,
        detections_path=opts.save_detections,
        progress=opts.progress,
        latency=opts.latency,
    )
    return {"task": "detect", "split": split, **metrics}


# (name, recognises(folder), evaluate(model, options) -> metrics), tried in order.
DATASETS: list[tuple[str, Callable[[Path], bool], Callable[[nn.Module, EvalOptions], dict]]] = [
    ("mnist", _is_mnist, _mnist),
    ("cifar10", _is_cifar10, _cifar10),
    ("detection", _is_detection, _detection),
]


def evaluate(opts: EvalOptions) -> dict[str, Any]:
    """All metrics for ``opts`` as a JSON-ready dict."""
    if not opts.data.is_dir():
        raise DataError("no such folder; --data takes a dataset folder", path=opts.data)
    found = [(name, fn) for name, recognises, fn in DATASETS if recognises(opts.data)]
    if not found:
        known = ", ".join(n for n, _, _ in DATASETS)
        raise DataError(
            f"not a dataset folder this command knows ({known}): expected e.g. "
            "t10k-images-idx3-ubyte.gz (MNIST) or cifar10_jpg_test.tar.gz (CIFAR-10)",
            path=opts.data,
        )
    name, run_eval = found[0]
    model, fmt = load_model(opts.cfg, opts.weights, size=opts.size)
    metrics: dict[str, Any] = {
        "dataset": name,
        "split": opts.split,
        "cfg": str(opts.cfg) if opts.cfg else None,
        "weights": str(opts.weights),
        "weights_format": fmt,
        "weights_bytes": opts.weights.stat().st_size,
    }
    metrics.update(run_eval(model, opts))
    metrics.update(size_metrics(model))
    return metrics


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    metrics = evaluate(opts)
    if metrics.get("task") == "detect":
        from yolo_prune.eval.detection import format_metrics

        print(format_metrics(metrics))
    if "top1" in metrics:
        print(
            f"{metrics['dataset']} {metrics['split']}: top-1 {100 * metrics['top1']:.2f}% "
            f"({metrics['correct']:,}/{metrics['total']:,})"
        )
    print(
        f"params: {metrics['params_total']:,} total, {metrics['params_nonzero']:,} non-zero; "
        f"conv+fc weights: {metrics['weights_total']:,} total, "
        f"{metrics['weights_nonzero']:,} non-zero (sparsity {100 * metrics['sparsity']:.2f}%, "
        f"{metrics['compression']:.1f}x)"
    )
    if opts.out is not None:
        atomic_write_text(opts.out, json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {opts.out}")
    return 0
