"""Write a model as a Darknet cfg + weights pair that Darknet, OpenCV and we can load."""

from __future__ import annotations

from pathlib import Path

from yolo_prune.darknet import Darknet, format_cfg
from yolo_prune.darknet.weights import write_darknet_weights
from yolo_prune.utils.io import atomic_open_all


def export_darknet(model: Darknet, cfg_path: str | Path, weights_path: str | Path) -> None:
    """Write ``model.sections`` as cfg text and its tensors as ``.weights``, as a pair.

    A shrunk model's sections already carry its new ``filters=``; the ``[net]`` size is set to
    the size the model was built for, so the pair reloads at that size. Both files are written
    in full before either replaces an earlier export, so a kill never leaves a new cfg beside
    old weights.
    """
    c, h, w = model.input_shape
    net = model.sections[0]
    if (net["height"], net["width"]) != (h, w):
        net.set("height", h)
        net.set("width", w)
    with atomic_open_all(cfg_path, weights_path) as (cfg_file, weights_file):
        cfg_file.write(format_cfg(model.sections).encode("ascii", errors="strict"))
        write_darknet_weights(model, weights_file)
