"""Detection: Darknet pre-processing, post-processing (class-aware NMS) and the ``Detector``."""

from yolo_prune.detect.detector import Detector, prepare_for_inference, with_input_size
from yolo_prune.detect.draw import class_color, draw_detections
from yolo_prune.detect.postprocess import Detections, postprocess
from yolo_prune.detect.preprocess import (
    ImageTransform,
    letterbox_geometry,
    preprocess,
    resize_geometry,
)
from yolo_prune.detect.runner import DetectSummary, detect_source

__all__ = [
    "DetectSummary",
    "Detections",
    "Detector",
    "ImageTransform",
    "class_color",
    "detect_source",
    "draw_detections",
    "letterbox_geometry",
    "postprocess",
    "prepare_for_inference",
    "preprocess",
    "resize_geometry",
    "with_input_size",
]
