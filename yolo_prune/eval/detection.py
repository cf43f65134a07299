"""Everything ``yolo-prune eval`` reports for a detector, in one call.

    from yolo_prune.eval.detection import evaluate_detector
    metrics = evaluate_detector(model, "../shared/data/coco128", size=416)
    metrics["AP50"], metrics["fps"], metrics["sparsity"]

COCO AP figures come from pycocotools (:mod:`yolo_prune.eval.coco_map`); parameter counts from
the model as given (pruned zeros counted as such); GFLOPs as Darknet counts them at the
evaluation size; latency and FPS from :mod:`yolo_prune.eval.latency` on the inference form of
the model (batch norms folded, channels-last).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolo_prune.data.coco import DetectionDataset, load_detection_dataset
from yolo_prune.data.images import iter_images
from yolo_prune.detect.detector import Detector, with_input_size
from yolo_prune.errors import ConfigError
from yolo_prune.eval.coco_map import coco_map, detections_to_coco
from yolo_prune.eval.latency import device_description, measure_latency
from yolo_prune.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@torch.no_grad()
def size_figures(model: nn.Module) -> dict[str, Any]:
    """Parameter counts, sparsity and (for a Darknet model) GFLOPs at its input size.

    Returns:
        ``params`` / ``nonzero_params``: every parameter (BN included); ``params_sparsity``:
        their zero fraction; ``weights`` / ``nonzero_weights`` / ``sparsity``: the same over the
        conv and fully connected weights only (what pruning removes); ``gflops``: billions of
        floating-point operations per image as Darknet counts them (2 per multiply-add, plus
        the cheap layers), ``None`` for a model without a Darknet graph; ``gflops_nonzero``:
        the same with each convolution's share scaled by the fraction of its weights that are
        non-zero (what a sparse kernel would have to compute).
    """
    params = nonzero = weights = nonzero_weights = 0
    for p in model.parameters():
        params += p.numel()
        nonzero += int(torch.count_nonzero(p))
    for m in model.modules():
        if isinstance(m, _CONV_TYPES):
            weights += m.weight.numel()
            nonzero_weights += int(torch.count_nonzero(m.weight))
    out: dict[str, Any] = {
        "params": params,
        "nonzero_params": nonzero,
        "params_sparsity": 1.0 - nonzero / params if params else 0.0,
        "weights": weights,
        "nonzero_weights": nonzero_weights,
        "sparsity": 1.0 - nonzero_weights / weights if weights else 0.0,
        "gflops": None,
        "gflops_nonzero": None,
    }
    graph = getattr(model, "graph", None)
    layers = getattr(model, "layers", None)
    if graph is not None and layers is not None:
        dense = sparse = 0.0
        for spec, layer in zip(graph.layers, layers, strict=True):
            dense += spec.bflops
            lin = getattr(layer, "conv", None) or getattr(layer, "fc", None)
            if lin is None:
                sparse += spec.bflops
            else:
                w = lin.weight
                sparse += spec.bflops * int(torch.count_nonzero(w)) / w.numel()
        out["gflops"], out["gflops_nonzero"] = dense, sparse
    return out


def predict_dataset(
    detector: Detector,
    dataset: DetectionDataset,
    *,
    batch_size: int = 8,
    max_images: int | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], list[int], float]:
    """Run ``detector`` over ``dataset``.

    Unreadable images are skipped with a warning (their objects then count as missed).

    Returns:
        ``(results, image_ids, seconds)``: COCO result dicts (see
        :mod:`yolo_prune.eval.coco_map`), the ids of the images evaluated, and the wall time of
        the whole loop (decode, pre-process, forward, post-process), seconds.
    """
    records = dataset.images[:max_images] if max_images is not None else dataset.images
    by_path = {r.path: r for r in records}
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="img", desc="eval")
    start = time.perf_counter()
    try:
        for i in range(0, len(records), batch_size):
            chunk = [r.path for r in records[i : i + batch_size]]
            loaded = list(iter_images(chunk))
            if loaded:
                dets = detector([image for _, image in loaded])
                for (path, _), d in zip(loaded, dets, strict=True):
                    record = by_path[path]
                    image_ids.append(record.image_id)
                    results.extend(detections_to_coco(record.image_id, d, dataset.category_ids))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return results, image_ids, time.perf_counter() - start


def evaluate_detector(
    model: nn.Module,
    dataset: DetectionDataset | str | Path,
    *,
    split: str | None = None,
    size: int | Sequence[int] | None = None,
    letterbox: bool | None = None,
    conf: float = 0.005,
    nms: float = 0.45,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    max_images: int | None = None,
    latency: bool = True,
    latency_seconds: float = 2.0,
    latency_runs: int = 10,
    detections_path: str | Path | None = None,
    progress: bool = False,
    runtime: str | None = None,
) -> dict[str, Any]:
    """COCO AP, sizes, GFLOPs and speed of a detector on a detection dataset.

    Args:
        model: eval-mode output ``[B, N, 5 + C]`` (a Darknet detector); not modified.
        dataset: a loaded dataset, or a folder for :func:`load_detection_dataset`.
        split: the split of a dataset folder (``None``: the first ``val*``/``test*`` one).
        size: network input side (int) or ``(height, width)``, pixels; ``None``: the model's.
        letterbox: keep aspect ratios; ``None``: the cfg's ``letter_box``.
        conf: score threshold; mAP wants a low one (Darknet's ``detector map`` uses 0.005).
        nms: IoU threshold of the class-aware NMS.
        batch_size: images per forward pass, in the evaluation and the batched timing.
        device: torch device.
        max_images: evaluate only the first images (quick checks).
        latency: also time batch 1 and ``batch_size`` forward passes (a few seconds).
        latency_seconds: time spent measuring each batch size (at least ``latency_runs``
            passes).
        latency_runs: fewest timed passes per batch size.
        detections_path: also write the COCO result dicts here as JSON.
        progress: show a tqdm bar.
        runtime: where the model runs: ``torch``, ``onnxruntime``, ``opencv`` or ``auto`` (see
            :func:`yolo_prune.runtime.build_runtime`); ``None``: torch, or the runtime the model
            is bound to.

    Returns:
        A JSON-ready dict: ``AP``, ``AP50``, ``AP75`` (and the other COCOeval figures, in [0, 1]),
        the :func:`size_figures`, ``fps`` and ``latency_ms`` (batch 1), ``fps_batched`` and
        ``latency_ms_batched`` (``batch_size``), ``device``, ``images``, ``annotations``,
        ``size`` ``[h, w]``, ``letterbox``, ``conf``, ``nms``, ``eval_seconds``.

    Raises:
        DataError: the dataset cannot be read.
        ConfigError: bad options, or the model predicts more classes than the dataset has.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size}; expected a positive integer")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images {max_images}; expected a positive integer")
    data = (
        dataset
        if isinstance(dataset, DetectionDataset)
        else load_detection_dataset(dataset, split=split)
    )
    sized = with_input_size(model, size)
    # A model in another runtime (an .onnx file) counts its own parameters and FLOPs.
    own = getattr(sized, "size_figures", None)
    figures = own() if callable(own) else size_figures(sized)
    detector = Detector(
        sized, letterbox=letterbox, conf=conf, nms=nms, device=device, runtime=runtime
    )
    try:
        classes = detector.classes
    except AttributeError:
        classes = None
    if classes is not None and classes > len(data.category_ids):
        raise ConfigError(
            f"the model predicts {classes} classes but {data.name} has "
            f"{len(data.category_ids)} categories; evaluate it on data with its classes"
        )
    logger.info("evaluating on %r at %s", data, detector.size)
    results, image_ids, seconds = predict_dataset(
        detector, data, batch_size=batch_size, max_images=max_images, progress=progress
    )
    if detections_path is not None:
        atomic_write_text(detections_path, json.dumps(results) + "\n")
    metrics: dict[str, Any] = {
        "task": "detect",
        "dataset": data.name,
        "images": len(image_ids),
        "annotations": len(data.gt.getAnnIds(imgIds=image_ids)),
        "detections": len(results),
        "size": list(detector.size),
        "letterbox": detector.letterbox,
        "conf": conf,
        "nms": nms,
        "runtime": detector.runtime,
        "runtime_latency_ms": detector.runtime_latency_ms,
    }
    metrics.update(coco_map(data.gt, results, image_ids=image_ids))
    metrics.update(figures)
    metrics["eval_seconds"] = seconds
    metrics["eval_fps"] = len(image_ids) / seconds if seconds > 0 else None
    metrics["device"] = device_description(device)
    metrics["fps"] = metrics["latency_ms"] = None
    metrics["fps_batched"] = metrics["latency_ms_batched"] = None
    metrics["batch_size"] = batch_size
    if latency:
        shape = (3, *detector.size)
        one = measure_latency(
            detector.model,
            shape,
            batch_size=1,
            runs=latency_runs,
            min_seconds=latency_seconds,
            device=device,
        )
        metrics["fps"], metrics["latency_ms"] = one.fps, one.latency_ms
        if batch_size > 1:
            many = measure_latency(
                detector.model,
                shape,
                batch_size=batch_size,
                runs=latency_runs,
                min_seconds=latency_seconds,
                device=device,
            )
            metrics["fps_batched"], metrics["latency_ms_batched"] = many.fps, many.latency_ms
        else:
            metrics["fps_batched"], metrics["latency_ms_batched"] = one.fps, one.latency_ms
    return metrics


def build_validator(
    dataset: DetectionDataset | str | Path,
    *,
    split: str | None = None,
    size: int | Sequence[int] | None = None,
    batch_size: int = 8,
) -> Callable[..., dict[str, Any]]:
    """The ``validate`` function of :func:`~yolo_prune.detect.train.train_detector`.

    Returns:
        ``validate(model, *, letterbox, device)``: :func:`evaluate_detector` on ``dataset``
        (``split``, input ``size``) with the training run's letterbox and device, without
        latency timing.
    """

    def validate(
        model: nn.Module, *, letterbox: bool, device: torch.device | str
    ) -> dict[str, Any]:
        return evaluate_detector(
            model,
            dataset,
            split=split,
            size=size,
            letterbox=letterbox,
            batch_size=batch_size,
            device=device,
            latency=False,
        )

    return validate


def format_metrics(metrics: dict[str, Any]) -> str:
    """The figures of :func:`evaluate_detector` as a small two-column text table."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    h, w = metrics["size"]
    rows = [
        ("dataset", f"{metrics['dataset']} ({metrics['images']} images, "
                    f"{metrics['annotations']} objects)"),
        ("input", f"{w}x{h}{' letterbox' if metrics['letterbox'] else ''}, "
                  f"conf {metrics['conf']}, NMS {metrics['nms']}"),
        ("AP / AP50 / AP75 (%)",
         f"{pct(metrics['AP'])} / {pct(metrics['AP50'])} / {pct(metrics['AP75'])}"),
        ("params (non-zero)", f"{metrics['params']:,} ({metrics['nonzero_params']:,})"),
        ("conv+fc sparsity", f"{pct(metrics['sparsity'])} %"),
        ("GFLOPs (non-zero)", f"{num(metrics['gflops'], '.3f')} "
                              f"({num(metrics['gflops_nonzero'], '.3f')})"),
        ("latency batch 1", f"{num(metrics['latency_ms'], '.1f')} ms, "
                            f"{num(metrics['fps'], '.1f')} FPS"),
        (f"latency batch {metrics['batch_size']}",
         f"{num(metrics['latency_ms_batched'], '.1f')} ms, "
         f"{num(metrics['fps_batched'], '.1f')} FPS"),
        ("runtime", metrics.get("runtime", "torch")),
        ("device", metrics["device"]),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
