"""Write a model as a Darknet cfg + weights pair that Darknet, OpenCV and we can load."""

from __future__ import annotations

from pathlib import Path

from yolo_prune.darknet import Darknet, save_cfg


def export_darknet(model: Darknet, cfg_path: str | Path, weights_path: str | Path) -> None:
    """Write ``model.sections`` as cfg text and its tensors as ``.weights`` (both atomic).

    A shrunk model's sections already carry its new ``filters=``; the ``[net]`` size is set to
    the size the model was built for, so the pair reloads at that size.
    """
    c, h, w = model.input_shape
    net = model.sections[0]
    if (net["height"], net["width"]) != (h, w):
        net.set("height", h)
        net.set("width", w)
    save_cfg(model.sections, cfg_path)
    model.save_weights(weights_path)
