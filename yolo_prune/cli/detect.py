"""``yolo-prune detect``: run a detector on an image, a folder of images or a video.

    yolo-prune detect --cfg cfg/yolov3-tiny.cfg --weights yolov3-tiny.weights \\
        --source ../shared/data/images --out runs/detect

Writes the annotated image(s) or video to ``--out`` and ``--out/detections.json``: a list of
``{"image": file name or frame index, "category": name, "category_id": class index,
"bbox": [x, y, w, h] (original pixels), "score": float}``. Files in a folder that are not
readable images are skipped with a warning.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from yolo_prune.cli.common import add_progress_argument, add_runtime_argument
from yolo_prune.errors import ConfigError, DataError, require_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectConfig:
    """What ``yolo-prune detect`` was asked to do."""

    cfg: Path | None  # Darknet .cfg (optional for a sparse file that carries its cfg)
    weights: Path  # Darknet .weights, a .pt state dict or a sparse file (yolo-prune prune)
    source: Path  # an image, a folder of images or a video file
    out: Path  # output folder
    names: Path | None = None  # class names, one per line (default: COCO's for 80 classes)
    size: int | None = None  # network input side, pixels (default: the cfg's)
    conf: float = 0.25  # score threshold
    nms: float = 0.45  # NMS IoU threshold
    letterbox: bool | None = None  # keep aspect ratio; None: the cfg's letter_box
    batch_size: int = 1  # images per forward pass (folders)
    max_frames: int | None = None  # stop a video after this many frames
    device: str = "cpu"  # torch device
    threads: int | None = None  # CPU threads for torch (default: torch's choice)
    save: bool = True  # write annotated images / video
    compile_mish: bool | None = None  # compiled mish; None: for mish models on the CPU
    runtime: str = "auto"  # torch, onnxruntime, opencv, or auto (the fastest here)
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf < 1.0:
            raise ConfigError(f"--conf {self.conf}; expected a score threshold in [0, 1)")
        if not 0.0 < self.nms <= 1.0:
            raise ConfigError(f"--nms {self.nms}; expected an IoU threshold in (0, 1]")
        if self.size is not None and (self.size < 32 or self.size % 32):
            raise ConfigError(f"--size {self.size}; expected a multiple of 32 (e.g. 416)")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}; expected a positive integer")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames {self.max_frames}; expected a positive integer")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}; expected a positive integer")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect",
        help="detect objects in an image, a folder of images or a video",
        description=(
            "Run a Darknet YOLO detector. Writes annotated images (or an annotated video) and "
            "detections.json to --out."
        ),
    )
    p.add_argument("--cfg", type=Path, help="Darknet .cfg (optional for a .sparse file)")
    p.add_argument(
        "--weights",
        type=Path,
        required=True,
        help=".weights, .pt, .sparse (pruned) or .onnx (exported, float or INT8) file",
    )
    p.add_argument("--source", type=Path, required=True, help="image, folder of images or video")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--names", type=Path, help="class names, one per line (default: COCO's)")
    p.add_argument("--size", type=int, help="network input side in pixels (default: the cfg's)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument(
        "--letterbox",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the aspect ratio, pad with grey (default: the cfg's letter_box)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--max-frames", type=int, help="stop a video after this many frames")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_progress_argument(p)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument(
        "--compile-mish",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run mish through a compiled kernel (default: on for mish models on the CPU, "
        "where yolov4 runs about 1.4x faster; the first run compiles for some seconds, and "
        "without a C++ compiler it falls back to eager mish)",
    )
    add_runtime_argument(p)
    p.add_argument(
        "--no-save",
        dest="save",
        action="store_false",
        help="write only detections.json, no annotated images/video",
    )
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> DetectConfig:
    return DetectConfig(
        cfg=args.cfg,
        weights=args.weights,
        source=args.source,
        out=args.out,
        names=args.names,
        size=args.size,
        conf=args.conf,
        nms=args.nms,
        letterbox=args.letterbox,
        batch_size=args.batch_size,
        max_frames=args.max_frames,
        device=args.device,
        threads=args.threads,
        save=args.save,
        compile_mish=args.compile_mish,
        runtime=args.runtime,
        progress=not args.no_progress,
    )


def load_names(path: Path | None, classes: int) -> list[str]:
    """Class names from a names file (one per line), or COCO's for an 80-class model."""
    if path is None:
        if classes == 80:
            from yolo_prune.data.coco import COCO_NAMES

            return list(COCO_NAMES)
        return [f"class{i}" for i in range(classes)]
    require_file(path, "names file")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if len(names) < classes:
        raise DataError(
            f"{len(names)} names for a model with {classes} classes; give one name per line",
            path=path,
        )
    return names[:classes]


def _runtime(asked: str, kind: str, model) -> str:
    """``auto`` on one image is torch: timing three runtimes takes longer than one image takes
    in any of them (a model bound to a runtime, an ``.onnx``, stays there)."""
    if asked == "auto" and kind == "image" and getattr(model, "runtime_name", None) is None:
        return "torch"
    return asked


def run_detect(cfg: DetectConfig, *, progress: bool = True):
    """Build the detector ``cfg`` describes and run it; returns the library's summary."""
    from yolo_prune.detect.detector import Detector
    from yolo_prune.detect.runner import detect_source, source_kind

    kind = source_kind(cfg.source)  # a missing source fails before the model is built
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    from yolo_prune.jobs.models import load_model

    model, _ = load_model(cfg.cfg, cfg.weights, size=cfg.size)
    if not getattr(model, "is_detector", False):
        raise ConfigError("this cfg has no [yolo] layer; detect runs detectors")
    detector = Detector(
        model,
        letterbox=cfg.letterbox,
        conf=cfg.conf,
        nms=cfg.nms,
        device=cfg.device,
        runtime=_runtime(cfg.runtime, kind, model),
        compile_mish=cfg.compile_mish,
    )
    # An exported .onnx carries its class names; --names overrides them.
    names = getattr(model, "names", None) if cfg.names is None else None
    names = names or load_names(cfg.names, detector.classes)
    summary = detect_source(
        detector,
        cfg.source,
        cfg.out,
        names=names,
        batch_size=cfg.batch_size,
        max_frames=cfg.max_frames,
        save=cfg.save,
        progress=progress,
    )
    return summary, detector


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    s, detector = run_detect(cfg, progress=cfg.progress)
    if detector.runtime_latency_ms:
        timed = ", ".join(f"{k} {v:.1f} ms" for k, v in detector.runtime_latency_ms.items())
        print(f"runtime {detector.runtime} (fastest at batch 1 here: {timed})")
    what = "frames" if s.kind == "video" else "images"
    print(f"{s.images} {what}, {s.detections} detections -> {s.json_path}")
    if s.skipped:
        print(f"skipped {len(s.skipped)} unreadable file(s): {', '.join(s.skipped[:5])}")
    if s.outputs:
        print(
            f"annotated {'video' if s.kind == 'video' else what}: "
            f"{s.outputs[0] if len(s.outputs) == 1 else cfg.out}"
        )
    if s.kind != "image":
        h, w = detector.size
        print(
            f"{s.fps:.1f} FPS overall (read, detect, draw, write); {s.detect_fps:.1f} FPS "
            f"detection alone (pre-process, forward, NMS) at {w}x{h}, "
            f"{torch.get_num_threads()} CPU threads, runtime {detector.runtime}"
        )
    return 0
