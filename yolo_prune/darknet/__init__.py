"""Darknet cfg parsing, graph resolution, the PyTorch model and .weights io."""

from yolo_prune.darknet.cfg import Section, format_cfg, load_cfg, parse_cfg
from yolo_prune.darknet.graph import LayerSpec, NetGraph, build_graph
from yolo_prune.darknet.model import Darknet
from yolo_prune.darknet.weights import load_darknet_weights, save_darknet_weights

__all__ = [
    "Darknet",
    "LayerSpec",
    "NetGraph",
    "Section",
    "build_graph",
    "format_cfg",
    "load_cfg",
    "load_darknet_weights",
    "parse_cfg",
    "save_darknet_weights",
]
